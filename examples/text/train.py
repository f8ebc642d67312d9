"""Text example: a small BERT classifier built from a config (no download), raw sentences in, class scores out.

    bundle export examples/text/train.py:make_spec -o artifacts/text
    bundle check artifacts/text

The tokenizer is part of the bundle: serving takes the RAW text, as a caller would send it, and the
frozen tokenizer (onnxruntime-extensions) is proven token for token against the research tokenizer at
export. The data are generated sentences (a fixed seed) whose sentiment is the balance of positive and
negative words in them; the vocabulary is those words, the letters, and their ``##`` continuations.

``make_gpt2_spec`` is the same task with a byte-level BPE (GPT-2 family) tokenizer trained here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from paritybundle import ExportSpec

SEED = 0
POSITIVE = ["good", "great", "happy", "lovely", "fine", "best"]
NEGATIVE = ["bad", "terrible", "sad", "awful", "poor", "worst"]
NEUTRAL = [
    "the",
    "a",
    "cat",
    "dog",
    "film",
    "movie",
    "sat",
    "on",
    "mat",
    "was",
    "very",
    "and",
    "it",
    "is",
    "this",
    "big",
    "small",
    "red",
    "blue",
    "over",
    "under",
    "quickly",
    "story",
    "day",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_LENGTH = 32


def sentences(count: int, seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """Generated sentences, capitalised and punctuated as people write, and their labels (0 negative, 1 positive)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        words = list(rng.choice(NEUTRAL, rng.integers(2, 12)))
        sentiment = rng.integers(0, 2)
        for _ in range(rng.integers(1, 3)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if sentiment else NEGATIVE)))
        text = " ".join(words).capitalize() + str(rng.choice([".", "!", "?", "..."]))
        texts.append(text)
        labels.append(int(sentiment))
    return texts, np.array(labels)


def bert_tokenizer(folder: Path, *, lowercase: bool = True, max_length: int = MAX_LENGTH):
    from transformers import BertTokenizerFast

    vocab = SPECIALS + list(LETTERS) + [f"##{c}" for c in LETTERS] + POSITIVE + NEGATIVE + NEUTRAL + list(".,!?'")
    if not lowercase:
        vocab += [w.capitalize() for w in NEUTRAL + POSITIVE + NEGATIVE] + list(LETTERS.upper())
    path = folder / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast(str(path), do_lower_case=lowercase, model_max_length=max_length)


def gpt2_tokenizer(folder: Path, max_length: int = MAX_LENGTH):
    """A byte-level BPE trained on the example's sentences (tokenizers' trainer, no download), as GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(sentences(500)[0], trainer)
    model = json.loads(bpe.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(m if isinstance(m, str) else " ".join(m) for m in model["merges"]) + "\n"
    )
    tokenizer = GPT2TokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; research batches need one
    return tokenizer


def bert_model(vocab_size: int):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def gpt2_model(vocab_size: int, pad_token_id: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        num_labels=2,
        pad_token_id=pad_token_id,
        bos_token_id=pad_token_id,
        eos_token_id=pad_token_id,
        use_cache=False,
    )
    return GPT2ForSequenceClassification(config)


def train(model, tokenizer, texts: list[str], labels: np.ndarray, steps: int = 60):
    """A few Adam steps on the generated sentences: seconds on a CPU, enough for both classes to be predicted."""
    torch.manual_seed(SEED)
    batch = tokenizer(
        texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    )
    target = torch.as_tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(texts), (32,))
        loss = model(**{k: v[rows] for k, v in batch.items()}, labels=target[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_spec(*, lowercase: bool = True, max_length: int = MAX_LENGTH, steps: int = 60) -> ExportSpec:
    """The BERT-family classifier with its WordPiece tokenizer in the bundle."""
    torch.manual_seed(SEED)
    tokenizer = bert_tokenizer(
        Path(tempfile.mkdtemp(prefix="text-example-")), lowercase=lowercase, max_length=max_length
    )
    texts, labels = sentences(300)
    model = train(bert_model(tokenizer.vocab_size), tokenizer, texts, labels, steps)
    reference, _ = sentences(120, seed=SEED + 1)
    return ExportSpec(
        model=model,
        preprocess=tokenizer,
        reference_inputs={"text": reference},
        name="text",
        metrics={"train_accuracy": accuracy(model, tokenizer, texts, labels)},
    )


def make_gpt2_spec(steps: int = 60) -> ExportSpec:
    """The same task with a byte-level BPE tokenizer and a GPT-2 classifier."""
    torch.manual_seed(SEED)
    tokenizer = gpt2_tokenizer(Path(tempfile.mkdtemp(prefix="text-example-")))
    texts, labels = sentences(300)
    model = train(gpt2_model(len(tokenizer), tokenizer.pad_token_id), tokenizer, texts, labels, steps)
    reference, _ = sentences(120, seed=SEED + 1)
    return ExportSpec(model=model, preprocess=tokenizer, reference_inputs={"text": reference}, name="text-gpt2")


def accuracy(model, tokenizer, texts: list[str], labels: np.ndarray) -> float:
    with torch.no_grad():
        batch = tokenizer(
            texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
        )
        predicted = model(**batch).logits.argmax(-1).numpy()
    return float((predicted == labels).mean())
