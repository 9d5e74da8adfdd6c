"""Recipe loading (mmengine ``Config`` with ``_base_`` inheritance), ``--cfg-options`` overrides and validation of
the engine sections; imports no model code (the task validates ``model`` / ``data``, see ``vit_adapter_ds.tasks``)."""
from .errors import ConfigError
from .loader import load_recipe, parse_options, resolve_recipe_path
from .schema import validate_sections

__all__ = ["ConfigError", "load_recipe", "parse_options", "resolve_recipe_path", "validate_sections"]
