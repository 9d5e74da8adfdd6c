"""A registry whose ``register_module()`` returns the class unchanged (all the official files need)."""


class Registry:
    def __init__(self, name: str):
        self.name = name
        self.module_dict = {}

    def register_module(self, name=None, force=False, module=None):
        def _register(cls):
            self.module_dict[name or cls.__name__] = cls
            return cls

        return _register(module) if module is not None else _register
