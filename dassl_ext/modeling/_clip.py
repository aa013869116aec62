"""The OpenAI ``clip`` package (PyPI ``clip-anytorch``), imported once without its noise.

``clip`` imports ``pkg_resources``, which emits a deprecation ``UserWarning`` on every
run; the warning is about setuptools, not about anything our users can act on.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    import clip
    import clip.clip
    import clip.model

__all__ = ["clip"]
