"""finsent: sentiment of finance tweets (Bearish / Bullish / Neutral) with a LoRA-tuned encoder.

The pipeline core is at the top: `config` (params.yaml), `data`, `pretrained` (where a model name
points), `text` (normalisation), `tokenization`, `modeling`, `training`, `distributed`, `metrics`,
`export`, `quantization`; `atomic` (outputs written whole), `cli` and `errors`. `finsent.inference`
runs a trained model: the predictors and the three deployables (the HTTP API, the predict command,
bulk scoring); `finsent.experiments` holds the tools that compare and summarise runs.
The heavy modules (torch) are not imported here, so that light commands start fast.
"""

from finsent.config import LABELS, Params, load_params
from finsent.errors import FinsentError

__all__ = ["LABELS", "FinsentError", "Params", "load_params"]
__version__ = "0.1.0"
