"""LC-Rec / LETTER-LC-Rec plumbing on a tiny random LLaMA built here (no download, no accuracy).

Checked: code tokens added, LoRA trains while the LM (and frozen code rows) do not, the loss sees only
the response, KV-cache beam search agrees with teacher forcing and yields real items, checkpoints hold
only trained weights and reload through RecBole's trainer, the CPU kernels (eager attention in training,
fast LoRA dropout) change no gradient, clear errors.
"""

import copy
import json
import logging
import re

import numpy as np
import pytest
import torch

from recbole_letter import quick_start
from recbole_letter.model.letter_lc_rec import (
    DEFAULT_TEMPLATE_FILE,
    LC_Rec,
    LETTER_LC_Rec,
    code_token_names,
    llm_dtype_warning,
    load_causal_lm,
    load_prompt_templates,
)
from recbole_letter.model import letter_lc_rec
from recbole_letter.trainer import load_checkpoint
from conftest import tiny_config, write_ml100k_slice
from numerics import float32_tolerance

CODEBOOK_SIZES = [16, 16, 8]
# float32 bounds of the tiny LLaMA (2 layers, hidden 32, intermediate 64, a vocabulary of 112, prompts of up
# to ~70 tokens): its longest reduction is the log-softmax over the vocabulary; its chain from tokens to
# logits per layer q/k/v, scores, weights @ v, o, gate/up, down, two RMS norms and LoRA's A and B on the way
# (14), then a norm and the head: 30, twice that for gradients. Measured against a float64 copy on AVX-512
# and AVX2: < 1e-6 relative (of the largest value), ~20x below the bound
LC_REDUCTION, LC_STEPS = 112, 30
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
DATASET = "ml-lc"


def _build_tiny_llm(folder, tie_word_embeddings):
    """A 2-layer LLaMA (hidden 32) with a word-level tokenizer covering the prompt templates' words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    templates = load_prompt_templates()
    text = " ".join([templates["wrapper"], templates["history_separator"], templates["test"], *templates["train"]])
    splitter = pre_tokenizers.Whitespace()
    words = sorted({piece for piece, _ in splitter.pre_tokenize_str(text)} | {"a"})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab) + 3,  # a few unused rows, like padded vocabularies
                         hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tie_word_embeddings, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    return _build_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), tie_word_embeddings=True)


@pytest.fixture(scope="module")
def lc_data_path(tmp_path_factory):
    """A 40-user slice of ml-100k: a full train + evaluate run of the tiny LM takes a few seconds."""
    return write_ml100k_slice(tmp_path_factory.mktemp("data"), DATASET, n_users=40)


@pytest.fixture(scope="module")
def tiny_codes_file(lc_data_path, tmp_path_factory):
    """Random unique 3-level codes (16 x 16 x 8) for every item of the slice, as a LETTER index json."""
    lines = (lc_data_path / DATASET / f"{DATASET}.inter").read_text().splitlines()[1:]
    items = sorted({line.split("\t")[1] for line in lines}, key=int)
    rng = np.random.default_rng(0)
    flat = rng.choice(int(np.prod(CODEBOOK_SIZES)), size=len(items), replace=False)
    codes = np.stack(np.unravel_index(flat, CODEBOOK_SIZES), axis=1)
    index = {item: [f"<{'abc'[l]}_{c}>" for l, c in enumerate(row)] for item, row in zip(items, codes.tolist())}
    path = tmp_path_factory.mktemp("codes") / f"{DATASET}.index.json"
    path.write_text(json.dumps(index))
    return str(path)


@pytest.fixture
def lc_config(lc_data_path, tiny_llm, tiny_codes_file):
    return DATASET, {
        **tiny_config(lc_data_path),
        "llm_path": tiny_llm,
        "item_codes_file": tiny_codes_file,
        "MAX_ITEM_LIST_LENGTH": 5,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "beam_size": 10,
        "beam_batch_size": 32,
        "learning_rate": 0.01,
    }


def _build(model_class, name, cfg):
    config, _, train_data, valid_data, test_data = quick_start.prepare(model_class.__name__, name, config_dict=cfg)
    return config, model_class(config, train_data.dataset, model_class.tokenize(config, train_data.dataset)), train_data, test_data


def _first_batch(loader):
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, tuple) else batch


def test_code_tokens_and_lora_parameters(lc_config):
    name, cfg = lc_config
    config, model, _, _ = _build(LETTER_LC_Rec, name, cfg)
    first = model.first_code_token
    names = code_token_names(CODEBOOK_SIZES)
    assert len(model.tokenizer) == model.vocab_size == first + sum(CODEBOOK_SIZES)
    assert model.tokenizer.convert_tokens_to_ids(["<a_0>", "<b_0>", "<c_7>"]) == [first, first + 16, first + 39]
    assert model.tokenizer.convert_ids_to_tokens(list(range(first, model.vocab_size))) == names
    assert model.lm.get_input_embeddings().code_embedding.weight.shape == (sum(CODEBOOK_SIZES), 32)
    # LoRA on q,k,v,o (32->32, 32->16, 32->16, 32->32) and gate, up (32->64), down (64->32), 2 layers
    r = config["lora_r"]
    per_layer = r * ((32 + 32) + (32 + 16) * 2 + (32 + 32) + (32 + 64) * 2 + (64 + 32))
    assert model.trainable_parameter_counts() == {"lora": 2 * per_layer, "code_tokens": 0}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("freeze", [True, False])
def test_training_changes_lora_and_only_allowed_rows(lc_config, freeze):
    name, cfg = lc_config
    _, model, train_data, _ = _build(LETTER_LC_Rec, name, {**cfg, "freeze_code_embeddings": freeze})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.01)
    model.train()
    for _ in range(2):  # lora_B starts at 0, so lora_A first gets a gradient on the second step
        optimizer.zero_grad()
        model.calculate_loss(_first_batch(train_data)).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    code_rows = {n for n in before if ".code_embedding." in n}
    assert code_rows and (code_rows & changed) == (set() if freeze else code_rows)
    assert changed <= {n for n in before if "lora_" in n} | code_rows  # the LM's own weights never move
    if not freeze:
        assert model.trainable_parameter_counts()["code_tokens"] == sum(CODEBOOK_SIZES) * 32


def test_loss_only_on_response_tokens(lc_config):
    name, cfg = lc_config
    _, model, train_data, _ = _build(LETTER_LC_Rec, name, {**cfg, "tau": 1.0})
    model.eval()  # the fixed test prompt, no dropout: both losses see identical inputs
    batch = _first_batch(train_data)
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    targets = model.item_code_tokens[batch[model.POS_ITEM_ID]]
    parts = model.training_sequences(seq, seq_len, targets)
    labels, mask = parts["labels"], parts["attention_mask"].bool()
    n_targets = targets.shape[1]
    # labels: the response (last T positions) only; prompt and left padding are -100
    assert torch.equal(labels[:, -n_targets:], targets)
    assert (labels[:, :-n_targets] == -100).all()
    assert (~mask).any(), "rows of different history length must be left-padded"
    assert (mask[:, :-1] <= mask[:, 1:]).all()  # padding only on the left
    # HF's own loss over these labels (one left-padded batch) == our ranking loss at tau 1, also when
    # the batch runs as sub-batches of similar history length (length_buckets); tau changes it
    assert model.length_buckets == 8
    with torch.no_grad():
        exact = copy.deepcopy(model).double().lm(**parts).loss  # (transformers' loss takes logits to float32)
        hf_loss = model.lm(**parts).loss
        ours = model.calculate_loss(batch)
        model.length_buckets = 1
        whole = model.calculate_loss(batch)
        model.tau = 0.5
        sharper = model.calculate_loss(batch)
    for loss in (hf_loss, ours, whole):  # each within the float32 bound of the exact loss
        torch.testing.assert_close(loss.double(), exact.double(), rtol=0,
                                   atol=float32_tolerance(exact, LC_REDUCTION, LC_STEPS))
    assert not torch.allclose(ours, sharper)
    # the prompt lists each history item's code tokens, oldest first, and nothing of padding items
    row = int(seq_len.argmax())
    prompt = model.tokenizer.convert_ids_to_tokens(parts["input_ids"][row][mask[row]][:-n_targets].tolist())
    listed = [t for t in prompt if re.fullmatch(r"<[a-z]_\d+>", t)]
    expected = model.tokenizer.convert_ids_to_tokens(model.item_code_tokens[seq[row, : seq_len[row]]].flatten().tolist())
    assert listed == expected


def test_cpu_kernels_train_eager_with_fast_lora_dropout_and_same_gradients(lc_config):
    from recbole_letter.model.t5_cpu import Dropout

    name, cfg = lc_config
    cfg = {**cfg, "prompt_sample_train": False}
    _, fast, train_data, _ = _build(LETTER_LC_Rec, name, {**cfg, "llm_cpu_kernels": True})
    dropouts = [m for n, m in fast.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is Dropout and m.p == 0.05 for m in dropouts)
    loaded = fast.eval_attention
    assert loaded != "eager"  # the tiny LLaMA loads with SDPA, so the switch below is a real one
    fast.train()
    assert fast.lm.config._attn_implementation == "eager"
    fast.eval()
    assert fast.lm.config._attn_implementation == loaded
    # without dropout, the kernels change nothing but float rounding: same loss and LoRA gradients
    _, plain, _, _ = _build(LETTER_LC_Rec, name, {**cfg, "llm_cpu_kernels": False, "lora_dropout": 0.0})
    _, fast, _, _ = _build(LETTER_LC_Rec, name, {**cfg, "llm_cpu_kernels": True, "lora_dropout": 0.0})
    fast.load_state_dict(plain.state_dict())
    for model in (plain, fast):  # one lora_B off zero, so that lora_A gets gradients too
        first_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
        torch.nn.init.normal_(first_b, generator=torch.Generator().manual_seed(0))
    exact = copy.deepcopy(plain).double()
    batch = _first_batch(train_data)
    grads = []
    for model in (plain, fast, exact):
        model.train()
        model.calculate_loss(batch).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert plain.lm.config._attn_implementation == loaded and fast.lm.config._attn_implementation == "eager"
    assert grads[0].keys() == grads[1].keys() == grads[2].keys() and grads[0]
    for n, e in grads[2].items():  # both within the float32 bound of the exact gradient (0 where it is 0)
        for grad in grads[:2]:
            torch.testing.assert_close(grad[n].double(), e, rtol=0, atol=float32_tolerance(e, LC_REDUCTION, 2 * LC_STEPS))


def test_training_prompts_are_sampled_test_prompt_fixed(lc_config):
    name, cfg = lc_config
    _, model, _, _ = _build(LETTER_LC_Rec, name, cfg)
    model.train()
    assert len(set(model.template_indices(200, "cpu").tolist())) == len(model.templates["train"])
    model.eval()
    assert set(model.template_indices(50, "cpu").tolist()) == {model.test_template}


def test_decoding_gives_real_items_with_teacher_forced_scores(lc_config):
    name, cfg = lc_config
    _, model, _, test_data = _build(LETTER_LC_Rec, name, cfg)
    model.eval()
    batch = _first_batch(test_data)
    seq, seq_len = batch[model.ITEM_SEQ][:8], batch[model.ITEM_SEQ_LEN][:8]
    exact_model = copy.deepcopy(model).double()
    with torch.no_grad():
        items, scores = model.generate_items(seq, seq_len, beam_size=10)
        # the KV-cache beam path and the teacher-forced path agree on every returned item's log-likelihood:
        # each within the float32 bound of the exact one (a sum of code_len log-probs)
        for k in range(items.shape[1]):
            exact = exact_model.sequence_log_likelihood(seq, seq_len, items[:, k]).double()
            tolerance = float32_tolerance(exact, LC_REDUCTION, LC_STEPS * model.code_len)
            for result in (model.sequence_log_likelihood(seq, seq_len, items[:, k]), scores[:, k]):
                torch.testing.assert_close(result.double(), exact, rtol=0, atol=tolerance)
        full = model.full_sort_predict(batch)
    assert ((items >= 1) & (items < model.n_items)).all()
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert full.shape == (batch[model.ITEM_SEQ].shape[0], model.n_items)
    assert (torch.isfinite(full).sum(1) == 10).all() and torch.isinf(full[:, 0]).all()


def test_chunks_decoded_in_two_threads_give_one_thread_s_lists(lc_config):
    """``decode_workers: 2`` on the LLM's own KV cache (transformers' forward from two threads at once): the lists
    and scores of one thread decoding the chunks in turn, up to float32 rounding."""
    name, cfg = lc_config
    _, model, _, test_data = _build(LETTER_LC_Rec, name, {**cfg, "beam_batch_size": 3})
    model.eval()
    batch = _first_batch(test_data)
    seq, seq_len = batch[model.ITEM_SEQ][:11], batch[model.ITEM_SEQ_LEN][:11]  # chunks of 3, 3, 3 and 2 users
    results = {}
    for workers in (1, 2):
        model.decode_workers = workers
        results[workers] = model.generate_items(seq, seq_len, beam_size=10)
    assert torch.equal(results[1][0], results[2][0])
    # each within float32_tolerance of the exact scores (test above), so within twice it of each other
    bound = 2 * float32_tolerance(results[1][1], LC_REDUCTION, LC_STEPS * model.code_len)
    torch.testing.assert_close(results[2][1].double(), results[1][1].double(), rtol=0, atol=bound)


def test_trains_saves_and_reloads_through_recbole(lc_config):
    name, cfg = lc_config
    result = quick_start.run("LC_Rec", name, config_dict={**cfg, "freeze_code_embeddings": False, "train_batch_size": 512})
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    state = load_checkpoint(result["checkpoint"])["state_dict"]
    assert any("lora_A" in k for k in state) and any(".code_embedding." in k for k in state)
    assert not any(k.endswith("q_proj.base_layer.weight") or "base_embedding" in k for k in state)
    # a fresh model (base LM re-read from llm_path) + the checkpoint scores the test users exactly as the
    # trained model did (which kept anything the checkpoint might lack in memory) ...
    again = quick_start.evaluate_checkpoint(result["checkpoint"])
    assert again["test_result"] == result["test_result"]
    # ... and whatever the random init of the rest (another seed)
    _, fresh, _, test_data = _build(LC_Rec, name, {**cfg, "freeze_code_embeddings": False})
    _, other, _, _ = _build(LC_Rec, name, {**cfg, "freeze_code_embeddings": False, "seed": 7})
    fresh.load_state_dict(state)
    other.load_state_dict(state)
    fresh.eval(), other.eval()
    batch = _first_batch(test_data)
    with torch.no_grad():
        assert torch.equal(fresh.full_sort_predict(batch), other.full_sort_predict(batch))
    with pytest.raises(RuntimeError, match="checkpoint does not match"):
        fresh.load_state_dict({k: v for k, v in state.items() if "lora_A" not in k})


def test_ddp_two_processes_train_lora_and_code_rows(lc_config):
    # RecBole's DDP launcher, the documented multi-GPU path, here on 2 CPU processes (gloo): the LoRA and
    # code-row gradients are all-reduced, rank 0 writes the checkpoint, every rank evaluates its users
    from recbole_letter.quick_start import free_port

    name, cfg = lc_config
    cfg = {**cfg, "freeze_code_embeddings": False, "train_batch_size": 256, "nproc": 2, "port": free_port()}
    result = quick_start.run("LETTER_LC_Rec", name, config_dict=cfg)
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    state = load_checkpoint(result["checkpoint"])["state_dict"]
    _, fresh, _, _ = _build(LETTER_LC_Rec, name, {k: v for k, v in cfg.items() if k not in ("nproc", "port")})
    initial = fresh.state_dict()
    lora_b = [k for k in state if "lora_B" in k]
    assert lora_b and all(not torch.equal(state[k], initial[k]) for k in lora_b)  # B starts at 0: it trained
    code_rows = [k for k in state if ".code_embedding." in k]
    assert code_rows and any(not torch.equal(state[k], initial[k]) for k in code_rows)


def test_lc_rec_reads_plain_rqvae_keys():
    config = quick_start.build_config("LC_Rec", "ml-100k", config_dict={"llm_path": "x"})
    assert config["alpha"] == 0 and config["beta"] == 0 and config["lora_r"] == 8
    assert config["lora_alpha"] == 32 and config["lora_dropout"] == 0.05


def test_clear_errors(lc_config, tmp_path):
    name, cfg = lc_config
    with pytest.raises(FileNotFoundError, match=r"^llm_path '.*nowhere' is not a folder") as err:
        _build(LETTER_LC_Rec, name, {**cfg, "llm_path": str(tmp_path / "nowhere")})
    assert "\n" not in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="load_in_8bit: True needs a CUDA GPU"):
            _build(LETTER_LC_Rec, name, {**cfg, "load_in_8bit": True})
    with pytest.raises(ValueError, match="torch_compile compiles the T5 of LETTER_TIGER"):
        _build(LETTER_LC_Rec, name, {**cfg, "torch_compile": True})
    bad = json.loads(DEFAULT_TEMPLATE_FILE.read_text())
    bad["test"] = "no history placeholder here"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="must contain {history} exactly once"):
        load_prompt_templates(tmp_path / "bad.json")


def test_untied_output_head_has_its_own_code_rows(lc_config, tmp_path):
    name, cfg = lc_config
    untied = _build_tiny_llm(tmp_path / "untied", tie_word_embeddings=False)
    _, model, _, test_data = _build(LETTER_LC_Rec, name, {**cfg, "llm_path": untied, "freeze_code_embeddings": False})
    head = model.lm.get_output_embeddings()
    assert not head.tied and head.code_head.weight.shape == (sum(CODEBOOK_SIZES), 32)
    assert model.trainable_parameter_counts()["code_tokens"] == 2 * sum(CODEBOOK_SIZES) * 32
    model.eval()
    batch = _first_batch(test_data)
    seq, seq_len = batch[model.ITEM_SEQ][:4], batch[model.ITEM_SEQ_LEN][:4]
    with torch.no_grad():
        items, scores = model.generate_items(seq, seq_len, beam_size=10)
        exact = copy.deepcopy(model).double().sequence_log_likelihood(seq, seq_len, items[:, 0]).double()
        tolerance = float32_tolerance(exact, LC_REDUCTION, LC_STEPS * model.code_len)
        for result in (model.sequence_log_likelihood(seq, seq_len, items[:, 0]), scores[:, 0]):
            torch.testing.assert_close(result.double(), exact, rtol=0, atol=tolerance)


def test_llm_dtype_without_matrix_instructions_warns(monkeypatch, tiny_llm, caplog):
    """llm_dtype bfloat16 / float16 where the device has no such matrix instructions: one warning line at
    load, naming the instructions and the faster setting; none for float32 or where they exist."""
    monkeypatch.setattr(letter_lc_rec, "native_autocast", lambda device, dtype: False)
    assert llm_dtype_warning(torch.device("cpu"), torch.float32) is None
    line = llm_dtype_warning(torch.device("cpu"), torch.bfloat16)
    assert line.startswith("llm_dtype: bfloat16, but this CPU has no bfloat16 matrix instructions "
                           "(avx512_bf16 or AMX)") and "llm_dtype: float32 is faster here" in line
    assert "(AMX-FP16)" in llm_dtype_warning(torch.device("cpu"), torch.float16)
    config = {"llm_path": tiny_llm, "llm_dtype": "bfloat16", "llm_gguf_file": None, "load_in_8bit": False,
              "device": torch.device("cpu")}
    with caplog.at_level(logging.WARNING):
        lm = load_causal_lm(config)
    assert lm.dtype == torch.bfloat16
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING].count(line) == 1
    monkeypatch.setattr(letter_lc_rec, "native_autocast", lambda device, dtype: True)
    assert llm_dtype_warning(torch.device("cpu"), torch.bfloat16) is None
