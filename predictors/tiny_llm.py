# pyright: reportMissingImports=false
"""Write a tiny Llama model (random weights) and its tokenizer to a folder, for a real vLLM.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences over an
ASCII-only alphabet (so every token decodes to whole text), with a trivial chat template. Run it
with the vLLM environment's Python (it needs torch, transformers and tokenizers):
``python tiny_llm.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SENTENCES = [
    "The router sends each request through the graph.",
    "A switch routes dogs to one model and cats to another.",
    "An ensemble asks three models at once and merges the answers.",
    "Streaming tokens arrive one by one at the client.",
    "hello world, this is a tiny language model for tests.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    alphabet = [chr(c) for c in range(32, 127)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(SENTENCES + alphabet, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
