"""The models of a run: the initial checkpoint, the frozen teacher, the ZeRO-3 student, tiny test models.

Heavy imports (transformers, deepspeed) happen inside the functions.
"""
