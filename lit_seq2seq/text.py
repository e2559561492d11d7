"""Text <-> token ids for models trained on pair files: tokenizers, vocabularies, and their form in the ONNX metadata.

Plain Python and numpy (no torch): the runtime, the CLI's decode and the data module share this one definition.
Reserved ids are those of the generated tasks: 0 pads and starts the decoder, 1 ends a target; a source vocabulary
built with an unknown token has it at id 2.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from lit_seq2seq.contract import TEXT_KEYS
from lit_seq2seq.tasks import EOS, PAD

PAD_STR, EOS_STR, UNK_STR = "<pad>", "</s>", "<unk>"
RESERVED = (PAD_STR, EOS_STR)
PAD_ID, EOS_ID, UNK_ID = PAD, EOS, 2  # the generated tasks' reserved ids, and the unknown token after them
TOKENIZERS = ("char", "space")
NORMALIZATION = "NFC"
TEXT_KEY = "text"  # checkpoint entry holding TextSpec.to_dict() of a text model
# C0 and C1 control characters and DEL (Unicode category Cc), and lone surrogates: no text at all, and a tab or newline
# would silently split a text. Refused in every text: pair files (fit), the runtime's and decode's inputs.
CONTROL_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0xD800, 0xDFFF))
CONTROL = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in CONTROL_RANGES) + "]")


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # how Windows' "Unicode" text starts: named when UTF-8 is expected
SHOWN_CHARS = 40  # an unknown token in a message is cut to this many characters (a file without spaces is one token)


def show_token(token: str) -> str:
    """`token` quoted for a message: repr, cut after SHOWN_CHARS characters with its length given."""
    if len(token) <= SHOWN_CHARS:
        return repr(token)
    return f"{token[:SHOWN_CHARS]!r}... ({len(token):,} characters)"


# A carriage return inside a line: most often the line ends of a file saved with CR alone (old Mac), read as one line
CR_HINT = " (a carriage return inside a line: lines end at LF or CRLF; convert a file with CR line ends)"


def describe_control(char: str) -> str:
    """'control character U+0007' or 'lone surrogate U+D800'."""
    kind = "lone surrogate" if 0xD800 <= ord(char) <= 0xDFFF else "control character"
    return f"{kind} U+{ord(char):04X}"


def check_printable(text: str, where: str) -> None:
    """ValueError naming the first control character or lone surrogate of `text` (CONTROL), its code point and its
    position: a text holding one is refused, never tokenized."""
    bad = CONTROL.search(text)
    if bad:
        why = CR_HINT if bad.group() == "\r" else ""
        raise ValueError(
            f"{where}: {describe_control(bad.group())} at character {bad.start() + 1}; texts must be printable{why}"
        )


@dataclass(frozen=True)
class Tokenizer:
    """How one side's text becomes tokens: NFC, optional lowercasing, then code points ("char") or whitespace-separated
    tokens ("space", str.split() semantics)."""

    kind: str = "char"
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.kind!r}")

    def normalize(self, text: str) -> str:
        text = unicodedata.normalize(NORMALIZATION, text)
        return text.lower() if self.lowercase else text

    def split(self, text: str) -> list[str]:
        text = self.normalize(text)
        return list(text) if self.kind == "char" else text.split()

    def join(self, tokens: Iterable[str]) -> str:
        return ("" if self.kind == "char" else " ").join(tokens)


@dataclass(frozen=True)
class Vocab:
    """Token strings by id: the reserved ones first, then the data's tokens in code point order."""

    tokens: tuple[str, ...]
    has_unk: bool = False

    @staticmethod
    def head(unk: bool) -> tuple[str, ...]:
        """The reserved tokens a vocabulary starts with: <pad>, </s> and, with `unk`, <unk>."""
        return (*RESERVED, UNK_STR) if unk else RESERVED

    def __post_init__(self) -> None:
        head = self.head(self.has_unk)
        if self.tokens[: len(head)] != head:
            raise ValueError(f"a vocabulary must start with {', '.join(head)}, got {list(self.tokens[: len(head)])}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary must not repeat a token")
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, tokens: Iterable[str], unk: bool = False) -> Vocab:
        """The vocabulary of `tokens` (any iterable of token strings, repeats allowed)."""
        head = cls.head(unk)
        seen = set(tokens)
        clash = sorted(seen & set(head))  # without unk, "<unk>" is a token like any other
        if clash:
            raise ValueError(f"the data holds the reserved token {clash[0]!r}; it cannot be told from the reserved id")
        return cls((*head, *sorted(seen)), unk)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def min_token(self) -> int:
        """Smallest id a real token takes (the unknown token counts as one)."""
        return len(RESERVED)

    def id(self, token: str) -> int | None:
        """The id of `token`, the unknown id for an unknown one if the vocabulary has it, else None."""
        found = self._ids.get(token)  # type: ignore[attr-defined]
        if found is not None and found < self.min_token:  # "<pad>" or "</s>" typed as text is not padding or an end
            found = None
        return UNK_ID if found is None and self.has_unk else found

    def encode(self, tokens: Sequence[str], where: str = "") -> list[int]:
        """Ids of `tokens`; ValueError naming the first unknown token and its position (1-based) and `where`."""
        ids = [self.id(t) for t in tokens]
        if None in ids:
            at = ids.index(None)
            # a char model's space: the message alone read as a typo (" 猫" from a JSON line, a word with a space)
            space = " (whitespace: no training source held it)" if tokens[at].isspace() else ""
            raise ValueError(
                f"{where}{': ' if where else ''}unknown token {show_token(tokens[at])}{space} at position {at + 1}"
            )
        return ids  # type: ignore[return-value]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Token strings of `ids` up to (not including) the first end or pad id."""
        out = []
        for i in ids:
            if i in (PAD_ID, EOS_ID):
                break
            out.append(self.tokens[i])
        return out


@dataclass(frozen=True)
class TextSpec:
    """Both sides of a text model: what an app needs to turn text into source ids and target ids back into text."""

    source: Tokenizer
    target: Tokenizer
    source_vocab: Vocab
    target_vocab: Vocab

    def __post_init__(self) -> None:
        # What a tokenizer can make: an export whose metadata was written by hand (or edited) could hold a target
        # token with a newline (one decoded line out became two) or one no source text can ever split into.
        for side, tokenizer, vocab in (
            ("source", self.source, self.source_vocab),
            ("target", self.target, self.target_vocab),
        ):
            for token in vocab.tokens[len(vocab.head(vocab.has_unk)) :]:
                if not isinstance(token, str) or not token or CONTROL.search(token):
                    raise ValueError(f"{side}_tokens holds {token!r}: tokens are non-empty printable strings")
                if tokenizer.split(token) != [token]:  # one code point (char), no whitespace (space); as normalised
                    raise ValueError(f"{side}_tokens holds {token!r}, which the {tokenizer.kind} tokenizer never makes")

    def encode(self, text: str, where: str = "") -> list[int]:
        """Source ids of one text (not padded); errors name `where`, and the text the model reads where it differs
        from `text` (the position counts in it)."""
        try:
            return self.source_vocab.encode(self.source.split(text), where)
        except ValueError as error:
            raise ValueError(f"{error}{self.as_read(text)}") from None

    def as_read(self, text: str) -> str:
        """ "" when the model reads `text` as given; else " of 'TEXT', the text as the model reads it (how)": errors
        count positions and lengths in that text (a user who typed "Z" sees why the message names "z")."""
        normal = unicodedata.normalize(NORMALIZATION, text)
        read = self.source.normalize(text)
        if read == text:
            return ""
        how = " and ".join(h for h, changed in (("NFC", normal != text), ("lowercased", read != normal)) if changed)
        return f" of {show_token(read)}, the text as the model reads it ({how})"  # cut: a message, not the input

    def decode(self, ids: Iterable[int]) -> str:
        """Text of one row of target ids (stops at the end token)."""
        return self.target.join(self.target_vocab.decode(ids))

    def to_dict(self) -> dict:
        """Plain lists and strings, for a checkpoint (weights-only loading reads them back)."""
        return {
            "source_tokenizer": self.source.kind,
            "target_tokenizer": self.target.kind,
            "source_lowercase": self.source.lowercase,
            "target_lowercase": self.target.lowercase,
            "source_tokens": list(self.source_vocab.tokens),
            "target_tokens": list(self.target_vocab.tokens),
            "unk": self.source_vocab.has_unk,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> TextSpec:
        return cls(
            Tokenizer(d["source_tokenizer"], bool(d["source_lowercase"])),
            Tokenizer(d["target_tokenizer"], bool(d["target_lowercase"])),
            Vocab(tuple(d["source_tokens"]), bool(d["unk"])),
            Vocab(tuple(d["target_tokens"])),
        )

    def to_metadata(self) -> dict[str, str]:
        """The text keys of contract format 2 (see contract.TEXT_KEYS)."""
        return {
            "source_tokens": json.dumps(list(self.source_vocab.tokens), ensure_ascii=False),
            "target_tokens": json.dumps(list(self.target_vocab.tokens), ensure_ascii=False),
            "source_tokenizer": self.source.kind,
            "target_tokenizer": self.target.kind,
            "source_lowercase": str(int(self.source.lowercase)),
            "target_lowercase": str(int(self.target.lowercase)),
            "normalization": NORMALIZATION,
            "unk_token": str(UNK_ID) if self.source_vocab.has_unk else "",
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> TextSpec | None:
        """The spec an export carries, or None for an id-only model (format 1, or empty text keys)."""
        if not meta.get("source_tokens"):
            return None
        if meta.get("normalization") != NORMALIZATION:
            raise ValueError(f"unknown text normalization {meta.get('normalization')!r}; this runtime knows NFC")
        unk = meta.get("unk_token", "")
        if unk not in ("", str(UNK_ID)):
            raise ValueError(f"unk_token must be empty or {UNK_ID}, got {unk!r}")
        for key in ("source_lowercase", "target_lowercase"):
            if meta.get(key) not in ("0", "1"):  # "2" or "yes" read as false
                raise ValueError(f"{key} must be 0 or 1, got {meta.get(key)!r}")
        return cls(
            Tokenizer(meta["source_tokenizer"], meta["source_lowercase"] == "1"),
            Tokenizer(meta["target_tokenizer"], meta["target_lowercase"] == "1"),
            Vocab(tuple(json.loads(meta["source_tokens"])), unk != ""),
            Vocab(tuple(json.loads(meta["target_tokens"]))),
        )


ID_ONLY_METADATA = dict.fromkeys(TEXT_KEYS, "")  # the text keys of a model that reads and writes ids


def read_text_entry(entry: object, where: str) -> tuple[TextSpec, int, int]:
    """A checkpoint's TEXT_KEY entry (TextSpec.to_dict() | {source_length, min_source_length}) -> (spec, longest and
    shortest trained source lengths); ValueError naming `where` when it is damaged."""
    try:
        return TextSpec.from_dict(entry), int(entry["source_length"]), int(entry["min_source_length"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: its text entry is damaged ({type(error).__name__}: {error})") from None


def input_lines(stream: Iterable[bytes]) -> Iterator[str]:
    """The lines of a binary stream as they arrive, each decoded strictly as UTF-8 (a byte that is not is a
    ValueError, "line N: not UTF-8 text (why); save it as UTF-8", as export/node/decode.mjs says).
    A line ends at a newline, a carriage return before it dropped (CRLF files); any other separator (a lone carriage
    return, a form feed, U+2028) stays inside its line, as in a source given as an argument: line N is the file's
    line N, and a text model refuses a control character there by name. A byte order mark at the start and empty
    lines at the end are dropped, as pair files have them; an empty line before another line is a line (a bad one).
    What decode reads from stdin, and the benchmarks from reference files."""
    blank = 0  # empty lines held back: at the end of the input they are dropped (an editor's trailing newlines)
    for number, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            why = "a UTF-16 byte order mark" if number == 1 and raw[:2] in UTF16_BOMS else error.reason
            raise ValueError(f"line {number}: not UTF-8 text ({why}); save it as UTF-8") from None
        line = text[:-1] if text.endswith("\n") else text
        line = line[:-1] if line.endswith("\r") else line
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte order mark, as pair files skip it
        if not line:
            blank += 1
            continue
        yield from [""] * blank
        blank = 0
        yield line
