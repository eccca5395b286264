"""Composition: any registered upstream x aggregator x classifier builds and learns."""
import pytest
import torch

from ser_plugins import build_model, list_plugins
from ser_plugins.model import CompositionError, WeightedLayerSum

BASE = {"corpus": {"name": "iemocap", "root": "x", "labels": ["neu", "hap", "ang", "sad"]},
        "upstream": {"name": "fbank", "n_mels": 24}, "aggregator": "stats", "classifier": "linear"}
AGGREGATORS = [s.name for s in list_plugins("aggregator") if s.dist == "ser-plugins"]
CLASSIFIERS = [s.name for s in list_plugins("classifier") if s.dist == "ser-plugins"]
HANDCRAFTED = ["fbank", "mfcc", "spectrogram"]


def batch():
    torch.manual_seed(0)
    wavs = torch.randn(3, 6400) * 0.1
    return wavs, torch.tensor([6400, 4800, 3200])


@pytest.mark.parametrize("upstream", HANDCRAFTED)
@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_combination_builds_and_takes_a_learning_step(upstream, aggregator, classifier):
    model = build_model({**BASE, "upstream": upstream, "aggregator": aggregator, "classifier": classifier,
                         "features": {"projection": 16}})
    wavs, lens = batch()
    targets = torch.tensor([0, 1, 2])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(wavs, lens), targets).item()

    before = eval_loss()
    for _ in range(10):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(wavs, lens), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(wavs, lens).shape == (3, 4)
    assert eval_loss() < before


def test_weighted_sum_of_layers_is_a_softmax_mixture():
    ws = WeightedLayerSum(3)
    states = [torch.full((1, 2, 4), float(i)) for i in range(3)]
    assert torch.allclose(ws(states), torch.full((1, 2, 4), 1.0))  # uniform weights: mean of 0, 1, 2
    with torch.no_grad():
        ws.weights.copy_(torch.tensor([0.0, 0.0, 50.0]))
    assert torch.allclose(ws(states), torch.full((1, 2, 4), 2.0), atol=1e-4)


def test_layer_index_out_of_range_is_refused():
    with pytest.raises(CompositionError, match="out of range"):
        build_model({**BASE, "features": {"layer": 5}})


def test_utterance_normalised_features_with_mean_pooling_are_refused():
    with pytest.raises(CompositionError, match="same vector for every utterance"):
        build_model({**BASE, "upstream": {"name": "fbank", "normalize": "utterance"}, "aggregator": "mean"})
    build_model({**BASE, "upstream": {"name": "fbank", "normalize": "utterance"}, "aggregator": "stats"})


def test_frozen_upstream_gets_no_gradient():
    model = build_model({**BASE, "upstream": "fbank"})
    wavs, lens = batch()
    model(wavs, lens).sum().backward()
    assert not model.upstream_trainable
    assert all(p.grad is not None for p in model.head.parameters())


def test_build_model_takes_cli_style_overrides_and_the_corpus_classes():
    model = build_model(BASE, overrides=["aggregator=mean", "classifier.dropout=0.2"])
    assert type(model.head.aggregator).__name__ == "MeanPooling"
    assert model.head.classifier(torch.zeros(2, 24)).shape == (2, 4)  # the corpus option names 4 classes
