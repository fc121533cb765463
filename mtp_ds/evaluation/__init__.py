"""Evaluation with the stock lm-eval CLI: the `mtp` model, the hook that registers it, and the Pareto plot.

`lm_eval_model.py` (`lm_eval --model mtp`: HFLM with generation replaced by `mtp_ds.decoding.generate`),
`lm_eval_hook.py` (run at interpreter start by the installed `mtp_ds_lm_eval.pth`; stdlib only, so this
package's `__init__` imports nothing), `pareto.py` (accuracy vs acceleration, drawn by eval/sweep.py and the
demo).
"""
