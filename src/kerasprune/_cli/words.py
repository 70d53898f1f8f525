"""The CLI's vocabulary: library messages say `round_to=8`; the command line says `--round-to 8`.

`cli_words(text)` rewrites the Python argument names of the library's messages and
warnings into the options of the `kerasprune` command, so that what a command prints
tells the user what to type. It is the one place that knows both vocabularies.
"""

from __future__ import annotations

import re

#: Python argument -> CLI option (the options of `select` and the data helpers).
OPTIONS = {
    "ratio": "--ratio",
    "count": "--count",
    "threshold": "--threshold",
    "target_flops": "--target-flops",
    "target_params": "--target-params",
    "round_to": "--round-to",
    "min_keep": "--min-keep",
    "batch_size": "--batch-size",
    "x_key": "--x-key",
    "y_key": "--y-key",
    "target_ratio": "--ratio",
}

_NAMES = "|".join(sorted(OPTIONS, key=len, reverse=True))

_RULES: list[tuple[re.Pattern, str]] = [
    # "`--unsafe` (CLI) or `safe_mode=False` (Python)" / "`--data` in the CLI, `data=` in Python"
    (re.compile(r"`(--[a-z-]+)` \(CLI\) or `[^`]+` \(Python\)"), r"\1"),
    (re.compile(r"`(--[a-z-]+)` in the CLI, `[^`]+` in Python"), r"\1"),
    (re.compile(r" \(overwrite=True\)"), ""),
    (re.compile(r"\(decorated with `@keras\.saving\.register_keras_serializable`\) or pass `custom_objects=`"),
     "(decorated with @keras.saving.register_keras_serializable) with --import MODULE_OR_FILE"),
    (re.compile(r"pass data= \(.*?dataset\)"), "pass --data FILE.npz (arrays x and y)"),
    (re.compile(r"needs loss=<[^>]*>"), "needs --loss NAME (a Keras loss, e.g. sparse_categorical_crossentropy)"),
    (re.compile(r"channelwise=\['([^']*)'\]"), r"--channelwise \1"),
    (re.compile(r"; pass x, \(x, y\), a list of batches, a generator or a dataset"), ""),
    # {'target_flops': 0.5} -> --target-flops 0.5
    (re.compile(r"\{((?:'(?:" + _NAMES + r")': [^,{}]+(?:, )?)+)\}"), lambda m: _dict_options(m.group(1))),
    # round_to=8 -> --round-to 8 ; "ratio must be" -> "--ratio must be"
    (re.compile(r"(?<![\w-])(" + _NAMES + r")=(?!=)"), lambda m: OPTIONS[m.group(1)] + " "),
    (re.compile(r"(?<![\w'-])(" + _NAMES + r")(?= (?:must|is the|asked))"), lambda m: OPTIONS[m.group(1)]),
    (re.compile(r"--([a-z-]+) None\b"), r"no --\1"),
]


def _dict_options(body: str) -> str:
    parts = re.findall(r"'(\w+)': ([^,]+)", body)
    return " ".join(f"{OPTIONS[k]} {v.strip()}" for k, v in parts)


def cli_words(text: str) -> str:
    """`text` with the library's Python argument names replaced by CLI options.

    Example:
        >>> cli_words("round_to=16 changed the channels removed in 2 groups")
        '--round-to 16 changed the channels removed in 2 groups'
    """
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text
