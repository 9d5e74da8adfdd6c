"""Recipe loading (mmengine ``Config`` with ``_base_`` inheritance), ``--cfg-options`` overrides and validation."""
from .loader import ConfigError, load_recipe, parse_options, resolve_recipe_path
from .schema import validate_recipe

__all__ = ["ConfigError", "load_recipe", "parse_options", "resolve_recipe_path", "validate_recipe"]
