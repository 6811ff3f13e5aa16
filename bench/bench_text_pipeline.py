"""Text preprocessing throughput: cleaning + tokenization + vocabulary building on generated text, in MB/s.

    .venv/bin/python bench/bench_text_pipeline.py            # 50 MB (make bench-text)
    .venv/bin/python bench/bench_text_pipeline.py --mb 5     # quicker

Measured in one run, on the same texts:
- project:   preprocessing.text.fit with the default TextConfig (NFKC, HTML, URL, e-mail and number placeholders,
             lowercase, punctuation removal, word tokens, vocabulary with min_freq/max_vocab, and the train texts
             encoded to padded ids);
- baseline:  the issue's plain Python baseline, `re.findall(r"\\w+", text.lower())` into a collections.Counter
             (no cleaning, no encoding);
- same-work: plain Python doing the project's cleaning (unicodedata NFKC, the same regexes with re.sub, split,
             Counter), for a ratio on equal work.
Ratios are project / baseline and project / same-work; the machine is noisy, so compare ratios, not seconds.
"""
import collections
import re
import sys
import unicodedata

import numpy as np
import pandas as pd

from common import parser, timed
from preprocessing import text
from preprocessing.config import TextConfig

TARGET = {"name": "label", "task": "classification", "classes": [], "mean": 0.0, "std": 1.0}


def generate(megabytes: float, seed: int = 0) -> pd.Series:
    """Reviews-like texts: Zipf-distributed words from a 60,000-word vocabulary of Hangul and Latin words, with
    emoji, punctuation, numbers, URLs and HTML sprinkled in; 5 to 60 words each."""
    rng = np.random.default_rng(seed)
    syllables = [chr(c) for c in rng.integers(0xAC00, 0xD7A4, 3000)]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(40000)]
    words += ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(20000)]
    extras = ["😀", "👍", "❤️", "!!", "...", "?", "3,000원", "https://example.com/p?id=42", "<br>", "ㅋㅋ", "a@b.co"]
    pieces, size, target = [], 0, megabytes * 1e6
    while size < target:
        lengths = rng.integers(5, 61, 20000)
        ranks = np.minimum(rng.zipf(1.3, lengths.sum()), len(words)) - 1
        tokens = np.array(words, dtype=object)[ranks]
        extra = rng.random(len(tokens)) < 0.05
        tokens[extra] = rng.choice(extras, int(extra.sum()))
        batch = [" ".join(chunk) for chunk in np.split(tokens, np.cumsum(lengths)[:-1])]
        pieces += batch
        size += sum(len(t.encode()) for t in batch)
    return pd.Series(pieces, dtype=object)


def baseline(texts) -> collections.Counter:
    counts, word = collections.Counter(), re.compile(r"\w+")
    for t in texts:
        counts.update(word.findall(t.lower()))
    return counts


def same_work(texts) -> collections.Counter:
    steps = [(re.compile(p), r) for p, r in [(r"<[^<>]{0,200}>", " "), (r"(?i)(?:https?://|www\.)\S+", " xxurl "),
                                             (r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", " xxemail ")]]
    after = [(re.compile(p), r) for p, r in [(r"\d+(?:[.,]\d+)*", " xxnum "), (r"[^\w\s]+", " ")]]
    counts = collections.Counter()
    for t in texts:
        t = unicodedata.normalize("NFKC", t[:20000])
        for pattern, repl in steps:
            t = pattern.sub(repl, t)
        t = t.lower()
        for pattern, repl in after:
            t = pattern.sub(repl, t)
        counts.update(t.split())
    return counts


def main(argv=None) -> int:
    args = parser(__doc__, {"--mb": (50.0, "megabytes of UTF-8 text to generate"),
                            "--repeat": (1, "best of N runs of each")}).parse_args(argv)

    texts = generate(args.mb)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts):,} texts, {megabytes:.1f} MB of UTF-8")
    project_s, (state, ids) = timed(text.fit, texts, TARGET, TextConfig(), repeat=args.repeat)
    baseline_s, counts = timed(baseline, texts, repeat=args.repeat)
    same_s, _ = timed(same_work, texts, repeat=args.repeat)
    stats = state["stats"]
    print(f"project   {megabytes / project_s:7.1f} MB/s  ({project_s:.2f} s; vocabulary {stats['vocab_before']:,}"
          f" -> {stats['vocab_after']:,}, ids {ids.shape[0]:,} x {ids.shape[1]})")
    print(f"baseline  {megabytes / baseline_s:7.1f} MB/s  ({baseline_s:.2f} s; {len(counts):,} distinct words; "
          "regex split + Counter, no cleaning)")
    print(f"same-work {megabytes / same_s:7.1f} MB/s  ({same_s:.2f} s; the project's cleaning in plain Python)")
    print(f"ratio project/baseline  {baseline_s / project_s:.2f}x")
    print(f"ratio project/same-work {same_s / project_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
