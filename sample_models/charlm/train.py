"""Train the character LM on Python standard-library source and write its checkpoint and windows.

    python -m sample_models.charlm.train

The setting of Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent
Networks", with the local Python installation's own library source in place of Linux source.
Deterministic: a fixed sorted file list, seeded sampling, deterministic algorithms, 2 threads.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import torch

from sample_models.charlm.model import VOCAB, build, encode, write_vocab

HERE = Path(__file__).resolve().parent
TRAIN_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "inspect.py",
    "json/decoder.py",
    "json/encoder.py",
    "pathlib.py",
    "pprint.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
    "typing.py",
)
HELD_OUT_FILES = ("bisect.py", "copy.py", "glob.py", "queue.py", "random.py", "tempfile.py")
SEQ, BATCH, STEPS = 100, 64, 700


def read(files: tuple[str, ...]) -> str:
    """Concatenate standard-library sources that exist in this installation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((root / name).read_text(encoding="utf-8") for name in files if (root / name).is_file())


def bits_per_char(model, ids: torch.Tensor) -> float:
    """Cross-entropy in bits per character on held-out text, in SEQ-long chunks."""
    chunks = ids[: (len(ids) - 1) // SEQ * SEQ + 1]
    x = chunks[:-1].view(-1, SEQ)[:200]
    y = chunks[1:].view(-1, SEQ)[:200]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, len(VOCAB)), y.reshape(-1))
    return float(loss) / math.log(2)


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(11)
    train_ids = torch.tensor(encode(read(TRAIN_FILES)), dtype=torch.long)
    held_text = read(HELD_OUT_FILES)
    held_ids = torch.tensor(encode(held_text), dtype=torch.long)
    print(f"charlm: {len(train_ids):,} training and {len(held_ids):,} held-out characters", flush=True)
    model = build()
    optimiser = torch.optim.Adam(model.parameters(), lr=4e-3)
    generator = torch.Generator().manual_seed(11)
    for step in range(1, STEPS + 1):
        starts = torch.randint(0, len(train_ids) - SEQ - 1, (BATCH,), generator=generator)
        batch = torch.stack([train_ids[s : s + SEQ + 1] for s in starts.tolist()])
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).reshape(-1, len(VOCAB)), batch[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 100 == 0:
            print(f"  step {step}/{STEPS}: train {float(loss.detach()) / math.log(2):.3f} bits/char", flush=True)
    model.eval()
    print(f"  held-out: {bits_per_char(model, held_ids):.3f} bits/char")
    torch.save(model.state_dict(), HERE / "v1.pt")
    write_vocab(HERE / "vocab.json")
    rng = np.random.default_rng(11)
    starts = np.sort(rng.choice(len(held_ids) - SEQ, size=500, replace=False))
    x = np.stack([held_ids[s : s + SEQ].numpy() for s in starts]).astype(np.int64)
    text = np.array([held_text[s : s + SEQ] for s in starts])
    np.savez_compressed(HERE / "windows.npz", x=x, text=text)


if __name__ == "__main__":
    main()
