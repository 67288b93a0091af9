"""Writes a small random BERT classifier and K "fine-tunes" of it for the
evaluator-overhead benchmark (benches/eval_server/run.sh).

    make_models.py DIR [K]

DIR/base is a BertForSequenceClassification built by transformers from a small
config (hidden 256, 4 layers, 4 heads, vocab 8000: 5.4 M parameters) with
random weights, saved with save_pretrained (safetensors); DIR/ft-0 … ft-{K-1}
are the base plus seeded noise of different sizes, saved the same way.
"""

import os
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

out, k = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6
torch.manual_seed(0)
config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4,
                    num_attention_heads=4, intermediate_size=1024, num_labels=2)
base = BertForSequenceClassification(config).eval()
base.save_pretrained(os.path.join(out, "base"))
for i in range(k):
    g = torch.Generator().manual_seed(100 + i)
    state = {name: t + (0.002 * (i + 1)) * torch.randn(t.shape, generator=g)
             if t.is_floating_point() else t
             for name, t in base.state_dict().items()}
    model = BertForSequenceClassification(config)
    model.load_state_dict(state)
    model.save_pretrained(os.path.join(out, "ft-%d" % i))
print("wrote base and %d fine-tunes to %s (%d parameters)"
      % (k, out, sum(p.numel() for p in base.parameters())))
