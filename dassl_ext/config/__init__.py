"""Configuration: Dassl defaults, trainer extensions, yaml with ``_BASE_``, CLI merge, rules."""

from dassl_ext.config.rules import (
    Check,
    OneOf,
    Range,
    Rule,
    check_rules,
    config_rules,
    register_config_rules,
    validate_config,
)
from dassl_ext.config.setup import (
    apply_config_extensions,
    get_cfg_default,
    load_yaml_with_base,
    merge_from_file,
    merge_from_list,
    register_config_extension,
    setup_cfg,
)

__all__ = [
    "Check", "OneOf", "Range", "Rule", "apply_config_extensions", "check_rules", "config_rules",
    "get_cfg_default", "load_yaml_with_base", "merge_from_file", "merge_from_list",
    "register_config_extension", "register_config_rules", "setup_cfg", "validate_config",
]  # fmt: skip
