"""finsent: sentiment of finance tweets (Bearish / Bullish / Neutral) with a LoRA-tuned small encoder.

Modules: `config` (params.yaml), `data` (the data set), `checkpoints` (where a model name points),
`features` (tokenizing), `modeling` (the LoRA classifier), `training`, `metrics`.
The heavy ones (torch) are not imported here, so that light commands start fast.
"""

from finsent.config import LABELS, Params, load_params
from finsent.errors import FinsentError

__all__ = ["LABELS", "FinsentError", "Params", "load_params"]
__version__ = "0.1.0"
