"""mtp-ds: multi-token prediction by online self-distillation, trained with DeepSpeed.

Heavy dependencies (torch, transformers, deepspeed, lm_eval) are imported by the modules that need them, so
`import mtp_ds` stays cheap.
"""

__version__ = "0.1.0"
