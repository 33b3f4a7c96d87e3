"""Loading of the compiled extension ``omnifast._C``, with the reason when it is not there.

``import omnifast`` never compiles anything: this module only tries the import, once, and
remembers why it failed so that an explicit request for a compiled backend can say so.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

_loaded: ModuleType | None = None
_error: str | None = None
_tried = False

_FIX = "build it with `make install` (or `pip install -e . --no-build-isolation`)"


def load_extension() -> ModuleType | None:
    """Return ``omnifast._C``, or ``None`` if it cannot be imported (see extension_error)."""
    global _loaded, _error, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("OMNIFAST_DISABLE_EXTENSION", "0").lower() in ("1", "true", "yes", "on"):
        _error = "OMNIFAST_DISABLE_EXTENSION is set"
        return None
    try:
        from omnifast import _C  # noqa: PLC0415
    except ImportError as exc:  # not built, or built against another torch
        _error = f"omnifast._C is not importable ({exc}); {_FIX}"
        return None
    _loaded = _C
    _warn_if_stale(_C)
    return _loaded


def extension_error() -> str | None:
    """Why :func:`load_extension` returned ``None`` (``None`` when the extension is loaded)."""
    load_extension()
    return _error


def _warn_if_stale(mod: ModuleType) -> None:
    """In a source checkout, warn once when csrc/ changed after the extension was built."""
    try:
        from omnifast import _build_config as cfg  # noqa: PLC0415

        if not os.path.isdir(cfg.CSRC):
            return
        built = mod.source_digest()
        if built != cfg.source_digest():
            warnings.warn(
                "omnifast._C was built from other sources than the ones in csrc/; "
                f"to use the current sources, {_FIX}",
                stacklevel=3,
            )
    except Exception:  # noqa: BLE001 (a staleness hint must never break loading)
        return


def _reset_for_tests() -> None:
    global _loaded, _error, _tried
    _loaded, _error, _tried = None, None, False
