"""Per-candidate evaluator (`--eval`): a new process per candidate that imports
torch and transformers, loads the candidate with from_pretrained and scores it."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import workload  # noqa: E402

torch.set_num_threads(1)
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
print(json.dumps(workload.score(model)), flush=True)
