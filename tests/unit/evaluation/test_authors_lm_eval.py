"""`lm_eval --model mtp` on a checkpoint laid out as the paper authors' release (tests/authors_layout.py): the mask
token given as the model arg mtp_token_id or found in the tokenizer, their remote code never run."""

import pytest
import torch
from authors_layout import authors_checkpoint, mask_id

from mtp_ds.decoding import generate


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory):
    return authors_checkpoint(tmp_path_factory.mktemp("authors") / "L3-1-8B-Magpie-MTP")


@pytest.mark.parametrize("given", [False, True])
def test_mtplm_decodes_it_with_the_mask_token_given_or_found(authors_dir, given):
    from mtp_ds.evaluation.lm_eval_model import MTPLM

    extra = {"mtp_token_id": str(mask_id(authors_dir))} if given else {}  # --model_args give strings
    lm = MTPLM(pretrained=str(authors_dir), strategy="selfspec", k_max=4, device="cpu", dtype="float32", **extra)
    rows = lm.model.config.vocab_size
    assert lm.mask_tokens.ids == (mask_id(authors_dir),) and lm.mask_tokens.padding == (len(lm.tokenizer), rows)
    context = torch.tensor([lm.tokenizer("three pens and two books")["input_ids"]])
    ours = lm._model_generate(context, max_length=context.shape[1] + 12, stop=[])
    reference = generate(lm.model, context, strategy="static", k=1, max_new_tokens=12, eos_token_id=lm.stop_token_ids)
    assert ours[0, context.shape[1] :].tolist()[: len(reference.sequences[0])] == reference.sequences[0]
    logits = lm._model_call(context)  # log-likelihoods: no mass on the mask id or the padding rows
    assert torch.isinf(logits[..., list(lm.mask_tokens.never_emitted)]).all()


def test_a_bad_mtp_token_id_is_one_model_arg_error(authors_dir):
    from mtp_ds.evaluation.lm_eval_model import MTPLM, ModelArgError

    with pytest.raises(ModelArgError, match=r"^model arg mtp_token_id='x': must be a token id \(an integer >= 0\)$"):
        MTPLM(pretrained=str(authors_dir), mtp_token_id="x", device="cpu", dtype="float32")
    with pytest.raises(ModelArgError) as error:
        MTPLM(pretrained=str(authors_dir), mtp_token_id=256, device="cpu", dtype="float32")
    assert str(error.value) == (
        f"model arg mtp_token_id of pretrained={str(authors_dir)!r}: mtp_token_id=256 is out of range: the model "
        "has 256 vocabulary rows (ids 0..255)"
    )
