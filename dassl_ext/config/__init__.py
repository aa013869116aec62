"""Configuration: Dassl defaults, trainer extensions, yaml with ``_BASE_``, CLI merge."""

from dassl_ext.config.setup import (
    apply_config_extensions,
    get_cfg_default,
    load_yaml_with_base,
    merge_from_file,
    merge_from_list,
    register_config_extension,
    setup_cfg,
    write_config,
)

__all__ = [
    "apply_config_extensions",
    "get_cfg_default",
    "load_yaml_with_base",
    "merge_from_file",
    "merge_from_list",
    "register_config_extension",
    "setup_cfg",
    "write_config",
]
