"""Evaluation server (`--eval-server`): builds the model once from the base
checkpoint, then for each candidate only loads its weights (load_state_dict from
the candidate's model.safetensors) and scores it. Same workload as
eval_command.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import workload  # noqa: E402
from modelsoup.server import serve  # noqa: E402

torch.set_num_threads(1)
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()


def score(request):
    state = load_file(os.path.join(request.model, "model.safetensors"))
    model.load_state_dict(state, strict=False)  # tied/absent buffers stay as built
    return workload.score(model)


serve(score)
