"""The embedded demo (`mtp-ds demo`) and everything only it uses; nothing outside this folder imports it.

`run.py` (the seven stages), `report.py` (summary rows, table, targets: pure functions), `synth_gsm.py`
(seeded GSM8K-style problems), `spm_tokenizer.py` (a sentencepiece BPE wrapped as an HF fast tokenizer),
`pretrain.py` (`mtp-ds pretrain`: the single-process NTP pretraining of the demo's teacher).
"""
