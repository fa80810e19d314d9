"""Text normalisation before tokenizing: the same in training, evaluation, export and prediction.

A link in a tweet (https://t.co/XKcPDilIuU) is random characters: about fifteen word pieces that carry no
sentiment, 29% of all the tokens of the training split. Replaced by one word, as BERTweet does, it still
says that a link was there, and training and prediction run on shorter sequences.

A cashtag ($AAPL, $BRK.B) names a company: replaced by one word, the model must judge the news
rather than the ticker, which recurs between tweets of one story and means nothing about a new one.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finsent.errors import FinsentError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NORMALIZATION_FILE = "text_normalization.json"
"""Written beside the tokenizer (tokenize, train and export outputs): see `save_text_processing`."""

MAX_TEXT_CHARS = 20_000
"""Characters of a text that prediction and training read. Every word piece but the special ones takes
at least one character, and a wordpiece tokenizer makes one piece of a word of over 100 characters:
max_length (128) pieces come from the first few thousand characters of any text that is not mostly
whitespace. The longest tweet of the data set has under 300."""

LINK = re.compile(r"https?://\S+")
# A dollar sign and a letter: $AAPL, $BRK.B, $ECONX; a price ($1,600) starts with a digit.
CASHTAG = re.compile(r"\$[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z]+)?")


def first_blank(texts: list[str]) -> int | None:
    """The index of the first text that is empty or only whitespace, if any: such a text is refused
    everywhere (data set, predict command, API), since it says nothing to classify."""
    return next((i for i, text in enumerate(texts) if not text.strip()), None)


@dataclass(frozen=True)
class TextNormalization:
    url_replacement: str | None = None
    """The word that replaces every link; None keeps links as they are."""
    cashtag_replacement: str | None = None
    """The word that replaces every cashtag; None keeps them as they are."""

    def __call__(self, texts: list[str]) -> list[str]:
        # Clipped first: a tokenizer reads the whole text before it truncates to max_length tokens,
        # so a 10 MB text would cost gigabytes of memory for 128 tokens (see MAX_TEXT_CHARS).
        texts = [text[:MAX_TEXT_CHARS] for text in texts]
        for pattern, replacement in ((LINK, self.url_replacement), (CASHTAG, self.cashtag_replacement)):
            if replacement is not None:
                texts = [pattern.sub(replacement, text) for text in texts]
        return texts

    def save(self, folder: Path) -> None:
        (Path(folder) / NORMALIZATION_FILE).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "TextNormalization":
        """What `save` wrote in `folder`. Its absence is an error: the model was trained with one."""
        file = Path(folder) / NORMALIZATION_FILE
        try:
            return cls(**json.loads(file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FinsentError(
                f"{file}: missing; every model folder has the text normalisation it was trained with"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            raise FinsentError(f"{file}: not the JSON object that the pipeline writes") from None


def save_text_processing(
    folder: Path, tokenizer: "PreTrainedTokenizerBase", normalize: TextNormalization
) -> None:
    """How a text becomes model input, saved as one: the normalisation and then the tokenizer.

    Every output that holds a model (tokenize, train, export) has both, so that prediction turns a text
    into exactly the tokens that training saw.
    """
    tokenizer.save_pretrained(folder)
    normalize.save(folder)


def load_text_processing(folder: Path) -> tuple["PreTrainedTokenizerBase", TextNormalization]:
    """The tokenizer and normalisation that `save_text_processing` wrote in `folder`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), TextNormalization.load(folder)
