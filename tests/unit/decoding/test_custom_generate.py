"""Stock transformers decodes an export multi-token: `model.generate(..., custom_generate=EXPORT_DIR,
trust_remote_code=True)` runs the decoder `mtp-ds export` ships in EXPORT_DIR/custom_generate/.

The contract: token for token what `mtp_ds.decoding.generate` gives for the same setting (greedy and seeded
sampling, batched left-padded rows), and for selfspec greedy what stock greedy `generate` gives. The shipped copy
is run in a Python that cannot import mtp_ds (no site .pth files, the checkout off sys.path): it must need only
what its requirements.txt lists.
"""

import ast
import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO, make_mtp_model, zero3_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer, TextStreamer

from mtp_ds.checkpoint.export import export_checkpoint
from mtp_ds.decoding import generate
from mtp_ds.decoding.bundle import FOLDER, REQUIREMENTS, shipped_sources

K_MAX = 4
MAX_NEW = 14
PROMPTS = [[5, 6, 7], [5, 6, 7, 8, 9, 10], [11, 12]]
# Each call's keywords to stock generate, and the DecodeSpec fields mtp_ds.decoding.generate gets for them
# (None: the export's default, selfspec at k_max 4). Sampling without top_k gets stock generate's top_k=50.
CASES = {
    "default": ({}, {"strategy": "selfspec", "k_max": K_MAX}),
    "static_k3": ({"strategy": "static", "k": 3}, {"strategy": "static", "k": 3, "k_max": K_MAX}),
    "confadapt": (
        {"strategy": "confadapt", "threshold": 0.2},
        {"strategy": "confadapt", "k_max": K_MAX, "threshold": 0.2},
    ),
    "selfspec_per_proposal": (
        {"strategy": "selfspec", "k_max": 3, "mask_layout": "per_proposal"},
        {"strategy": "selfspec", "k_max": 3, "mask_layout": "per_proposal"},
    ),
    "selfspec_ends_sized": (
        {"mask_layout": "ends", "propose_threshold": 0.2},
        {"strategy": "selfspec", "k_max": K_MAX, "mask_layout": "ends", "propose_threshold": 0.2},
    ),
    "selfspec_sampled": (
        {"do_sample": True, "temperature": 0.8, "seed": 5},
        {"strategy": "selfspec", "k_max": K_MAX, "temperature": 0.8, "top_k": 50},
    ),
    "static_sampled_top_p": (
        {"strategy": "static", "do_sample": True, "top_k": 0, "top_p": 0.9, "seed": 6},
        {"strategy": "static", "k": 1, "k_max": K_MAX, "temperature": 1.0, "top_p": 0.9},
    ),
}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_generate")
    model, _, _ = make_mtp_model("llama", k_max=K_MAX)
    model.config.mtp_k_max = K_MAX
    export_checkpoint(zero3_checkpoint(root / "step00000002", model), root / "export", dtype="float32")
    return root / "export"


def _loaded(export_dir):
    return AutoModelForCausalLM.from_pretrained(export_dir).eval()


def _batch():
    width = max(len(prompt) for prompt in PROMPTS)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])
    return ids, mask


def _reference(model, settings: dict, seed: int | None):
    ids, mask = _batch()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return generate(
        model,
        ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        eos_token_id=model.generation_config.eos_token_id,
        generator=generator,
        **settings,
    )


SHIPPED_RUN = textwrap.dedent(
    """
    import importlib.util, json, sys
    transformers_dir, site_packages, export_dir, cases, out = sys.argv[1:6]
    sys.path += [transformers_dir, site_packages]  # torch, transformers; no .pth file runs: no editable mtp_ds
    assert importlib.util.find_spec("mtp_ds") is None, "mtp_ds must not be importable here"
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    ids, mask = json.loads(sys.argv[6])
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    results = {}
    for name, kwargs in json.loads(cases).items():
        seed = kwargs.pop("seed", None)
        if seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        output = model.generate(input_ids=ids, attention_mask=mask, custom_generate=export_dir, trust_remote_code=True,
                                max_new_tokens=MAX_NEW, return_dict_in_generate=True, **kwargs)
        results[name] = {"sequences": output.sequences.tolist(), "tokens_per_pass": output.tokens_per_pass}
    open(out, "w").write(json.dumps(results))
    """
).replace("MAX_NEW", str(MAX_NEW))


def test_the_shipped_decoder_in_a_python_without_mtp_ds_equals_our_generate(export_dir, tmp_path):
    script, out = tmp_path / "run.py", tmp_path / "out.json"
    script.write_text(SHIPPED_RUN)
    ids, mask = _batch()
    cases = {name: call for name, (call, _) in CASES.items()}
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    transformers_dir = Path(transformers.__file__).parents[1]  # the CI floor stage's, or site-packages
    command = [sys.executable, "-I", "-S", str(script), str(transformers_dir), sysconfig.get_paths()["purelib"]]
    command += [str(export_dir)]
    command += [json.dumps(cases), str(out), json.dumps([ids.tolist(), mask.tolist()])]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    shipped = json.loads(out.read_text())
    model = _loaded(export_dir)
    for name, (call, settings) in CASES.items():
        reference = _reference(model, settings, call.get("seed"))
        new = [row[ids.shape[1] :] for row in shipped[name]["sequences"]]
        pad = model.generation_config.pad_token_id or 0
        expected = [
            tokens + [pad] * (max(map(len, reference.sequences)) - len(tokens)) for tokens in reference.sequences
        ]
        assert new == expected, name
        assert shipped[name]["tokens_per_pass"] == reference.tokens_per_pass, name
    assert max(max(row) for row in shipped["default"]["tokens_per_pass"]) > 1  # multi-token, not k=1
    with torch.no_grad():  # selfspec greedy is stock greedy decoding
        stock = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    for row, tokens in enumerate(shipped["default"]["sequences"]):
        assert tokens == stock[row].tolist()[: len(tokens)]


def test_the_export_ships_the_decoder_its_requirements_and_its_lossless_default(export_dir):
    folder = export_dir / FOLDER
    assert sorted(path.name for path in folder.iterdir()) == sorted([*shipped_sources(), "requirements.txt"])
    for name in shipped_sources():  # every import of this package made relative, lazy ones included
        tree = ast.parse((folder / name).read_text())
        absolute = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0]
        assert not [module for module in absolute if module.startswith("mtp_ds")], name
    assert (folder / "requirements.txt").read_text().split() == list(REQUIREMENTS)
    config = json.loads((export_dir / "config.json").read_text())
    assert config["mtp_decoding"] == {"strategy": "selfspec", "k_max": K_MAX, "mask_layout": "linear"}
    assert config["pard_token"] == config["mtp_token_id"]  # vLLM's parallel drafting (untested here)


def test_the_shipped_requirements_are_pyprojects_floors():
    dependencies = (REPO / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]", 1)[0]
    assert all(f'"{requirement}"' in dependencies for requirement in REQUIREMENTS)


class Recording(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended += 1


def test_a_streamer_gets_the_prompt_then_one_chunk_per_forward_pass(export_dir):
    model = _loaded(export_dir)
    prompt = torch.tensor([PROMPTS[1]])
    recording = Recording()
    output = model.generate(
        prompt,
        custom_generate=str(export_dir),
        trust_remote_code=True,
        streamer=recording,
        max_new_tokens=MAX_NEW,
        return_dict_in_generate=True,
    )
    chunks, start = [], prompt.shape[1]
    for count in output.tokens_per_pass[0]:
        chunks.append(output.sequences[0, start : start + count].tolist())
        start += count
    assert recording.puts == [prompt.tolist()] + chunks and recording.ended == 1
    assert max(map(len, chunks)) > 1

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    shown = []

    class Captured(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            shown.append(text)

    model.generate(
        prompt,
        custom_generate=str(export_dir),
        trust_remote_code=True,
        streamer=Captured(tokenizer, skip_prompt=True),
        max_new_tokens=MAX_NEW,
    )
    assert "".join(shown) == tokenizer.decode(output.sequences[0, prompt.shape[1] :])


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"num_beams": 2}, "num_beams"),
        ({"repetition_penalty": 1.3}, "repetition_penalty"),
        ({"do_sample": True, "min_p": 0.1}, "min_p"),
        ({"logits_processor": [lambda ids, scores: scores]}, "logits_processor"),
        ({"foo": 1}, "'foo'"),
        ({"strategy": "beam"}, "strategy"),
    ],
)
def test_a_setting_it_cannot_honour_is_one_line_naming_it(export_dir, kwargs, named):
    model = _loaded(export_dir)
    with pytest.raises(ValueError, match=named) as raised:
        model.generate(
            torch.tensor([PROMPTS[0]]),
            custom_generate=str(export_dir),
            trust_remote_code=True,
            max_new_tokens=4,
            **kwargs,
        )
    assert "\n" not in str(raised.value)


def test_a_streamer_with_two_rows_is_refused(export_dir):
    ids, mask = _batch()
    with pytest.raises(ValueError, match="a streamer shows one row: got 3 rows"):
        _loaded(export_dir).generate(
            input_ids=ids,
            attention_mask=mask,
            custom_generate=str(export_dir),
            trust_remote_code=True,
            streamer=Recording(),
        )


def test_stop_strings_and_eos_are_read_as_stock_generate_reads_them(export_dir):
    """A call's stop_strings (with tokenizer=) and eos_token_id end a row where mtp_ds.decoding.generate ends it;
    the finished row is padded with pad_token_id."""
    model, tokenizer = _loaded(export_dir), AutoTokenizer.from_pretrained(export_dir)
    ids, mask = _batch()
    free = _reference(model, {"strategy": "selfspec", "k_max": K_MAX}, None).sequences
    stop_text = tokenizer.decode(free[1][3:5])  # ends row 1 within its first tokens
    eos = free[0][4]
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        custom_generate=str(export_dir),
        trust_remote_code=True,
        max_new_tokens=MAX_NEW,
        stop_strings=[stop_text],
        tokenizer=tokenizer,
        eos_token_id=eos,
        pad_token_id=1,
    )
    reference = generate(
        model,
        ids,
        attention_mask=mask,
        max_new_tokens=MAX_NEW,
        strategy="selfspec",
        k_max=K_MAX,
        eos_token_id=eos,
        stop_strings=[stop_text],
        tokenizer=tokenizer,
    )
    assert min(map(len, reference.sequences)) < MAX_NEW  # something stopped early
    width = max(map(len, reference.sequences))
    for row, tokens in enumerate(reference.sequences):
        assert output[row, ids.shape[1] :].tolist() == tokens + [1] * (width - len(tokens))
