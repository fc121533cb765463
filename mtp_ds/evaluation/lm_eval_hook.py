"""Make `lm_eval --model mtp` work with the stock lm-eval console script, without importing lm-eval early.

lm-eval 0.4.x reads no model plugins, so the wheel's `mtp_ds_lm_eval.pth` runs this stdlib-only module at every
Python start. It puts a finder on `sys.meta_path` that registers `mtp` right AFTER `lm_eval.models` has run
(any earlier and the built-in models would vanish). docs/DECODING.md explains the guards against running twice.
"""

import sys

MODEL_NAME = "mtp"
MODEL_TARGET = "mtp_ds.evaluation.lm_eval_model:MTPLM"
HOOKED_MODULE = "lm_eval.models"
_MARKER = "_mtp_ds_lm_eval_hook"


def register_mtp_model() -> None:
    """Add the lazy `mtp` entry to lm-eval's model registry (idempotent); call only after `lm_eval.models`."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


class _RegisteringLoader:
    """Delegates to the real loader of `lm_eval.models`, then registers `mtp` once the module has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            register_mtp_model()
        except Exception as err:  # never break `import lm_eval.models` (and with it every lm-eval model)
            import warnings

            warnings.warn(f"mtp_ds: could not register lm-eval model {MODEL_NAME!r}: {err}", stacklevel=2)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code, ... go to the real loader
        return getattr(self._loader, name)


class _LmEvalModelsFinder:
    """A `sys.meta_path` finder that only reacts to `lm_eval.models` and never finds anything itself."""

    _mtp_ds_lm_eval_hook = True  # the marker: see module docstring

    def __init__(self):
        self._busy = False  # True while we ask the other finders; imports of one module are serialised

    def find_spec(self, fullname, path=None, target=None):
        if fullname != HOOKED_MODULE or self._busy:
            return None
        self._busy = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                if getattr(finder, _MARKER, False) or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Put the finder on `sys.meta_path` unless one is there; register at once if lm_eval.models is loaded."""
    if HOOKED_MODULE in sys.modules:
        register_mtp_model()
        return
    if not any(getattr(finder, _MARKER, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LmEvalModelsFinder())


install()
