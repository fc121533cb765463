"""The models of a run: loading the initial checkpoint, the frozen teacher, the ZeRO-3 student, tiny test models.

`loading.py` (tokenizer + weights the recipe names), `teacher.py` (every teacher mode behind one call),
`student.py` (the student engine, built after the teacher), `tiny.py` (small random models of the real
architectures and a local word tokenizer, for tests, CPU recipes and benchmarks). Heavy imports
(transformers, deepspeed) happen inside the functions.
"""
