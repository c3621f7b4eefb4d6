"""Cluster names: the shipped WordNet table, the lifting rule, unique names, and the class head on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclust.errors import ImgclustError
from imgclust.naming import (ClassHierarchy, choose_synset, class_probabilities, cluster_class_probabilities,
                             imagenet_hierarchy, name_clusters, name_clusters_with_head, unique_names)

from conftest import cifar10_subset_paths

DOG, CAT, DOMESTIC_CAT, FELINE, CARNIVORE = "n02084071", "n02121620", "n02121808", "n02120997", "n02075296"
DOMESTIC_ANIMAL = "n01317541"
TABBY, TIGER_CAT, EGYPTIAN_CAT, LION, GOLDEN_RETRIEVER, PUG = 281, 282, 285, 291, 207, 254


def one_hot_mix(weights: dict[int, float]) -> np.ndarray:
    p = np.zeros(1000)
    for c, w in weights.items():
        p[c] = w
    return p


def test_shipped_table_has_every_class_under_entity_and_the_118_dogs():
    h = imagenet_hierarchy()
    assert h.n_classes == 1000
    assert h.names[h.class_rows[0]] == "tench" and h.names[h.class_rows[TABBY]] == "tabby"
    assert h.covers[h.row("n00001740")].all()  # entity, the root
    # ImageNet-1k's dog breeds are classes 151..268, all under "dog" and nothing else is
    assert np.flatnonzero(h.covers[h.row(DOG)]).tolist() == list(range(151, 269))
    assert {CAT, "n02120997"} <= h.ancestors(h.wnids[h.class_rows[TABBY]])  # cat, feline


def test_table_follows_every_hypernym_path():
    # a toy DAG: class c1 has two parents, both must cover it
    table = {"classes": ["c0", "c1"], "synsets": {"c0": ["zero", ["a"]], "c1": ["one", ["a", "b"]],
                                                  "a": ["A", ["r"]], "b": ["B", ["r"]], "r": ["root", []]}}
    h = ClassHierarchy.from_table(table)
    assert h.covers[h.row("b")].tolist() == [False, True]
    assert h.covers[h.row("r")].tolist() == [True, True]
    assert h.ancestors("c1") == {"c1", "a", "b", "r"}


def test_choose_synset_is_the_most_specific_one_holding_the_mass():
    assert choose_synset(one_hot_mix({TABBY: 1.0}))[0] == imagenet_hierarchy().wnids[
        imagenet_hierarchy().class_rows[TABBY]]
    wnid, mass = choose_synset(one_hot_mix({TABBY: 0.5, TIGER_CAT: 0.3, EGYPTIAN_CAT: 0.2}))
    assert (wnid, round(mass, 6)) == (DOMESTIC_CAT, 1.0)
    # half house cats, half lions: "feline"; half house cats, half dogs: "domestic animal" (WordNet is a DAG:
    # dog and domestic cat have it as a second hypernym, and it covers fewer classes than "carnivore")
    assert choose_synset(one_hot_mix({TABBY: 0.5, LION: 0.5}), min_mass=0.6)[0] == FELINE
    assert choose_synset(one_hot_mix({TABBY: 0.5, GOLDEN_RETRIEVER: 0.5}), min_mass=0.6)[0] == DOMESTIC_ANIMAL
    assert choose_synset(one_hot_mix({TABBY: 0.5, LION: 0.3, GOLDEN_RETRIEVER: 0.2}), min_mass=0.9)[0] == CARNIVORE
    # a lower threshold accepts the more specific branch with the larger share
    assert choose_synset(one_hot_mix({TABBY: 0.45, GOLDEN_RETRIEVER: 0.55}), min_mass=0.5)[0] == \
        imagenet_hierarchy().wnids[imagenet_hierarchy().class_rows[GOLDEN_RETRIEVER]]
    with pytest.raises(ImgclustError):
        choose_synset(one_hot_mix({TABBY: 1.0}), min_mass=0)


def test_unique_names_numbers_repeats_without_collisions():
    assert unique_names(["dog", "cat", "dog"]) == ["dog", "cat", "dog (2)"]
    assert unique_names(["dog", "dog", "dog (2)"]) == ["dog", "dog (3)", "dog (2)"]


def test_name_clusters_averages_per_cluster_and_disambiguates():
    probs = np.stack([one_hot_mix({GOLDEN_RETRIEVER: 0.5, PUG: 0.5}),  # cluster 0: dogs (mass 1.0)
                      one_hot_mix({GOLDEN_RETRIEVER: 0.45, PUG: 0.45, TABBY: 0.1}),  # cluster 2: dogs (0.85)
                      one_hot_mix({TABBY: 1.0}),                         # cluster 1: cats
                      one_hot_mix({TIGER_CAT: 1.0}),
                      one_hot_mix({GOLDEN_RETRIEVER: 0.4, PUG: 0.4, TABBY: 0.2})])
    labels = np.array([0, 2, 1, 1, 2])
    names = name_clusters(probs, labels, n_clusters=4)
    assert [n.cluster for n in names] == [0, 1, 2, 3]
    assert names[1].synset == DOMESTIC_CAT and names[1].size == 2
    assert names[0].synset == names[2].synset == DOG
    assert names[0].name == "dog" and names[2].name == "dog (2)"  # the cluster with more dog mass keeps "dog"
    assert names[2].mass == pytest.approx(0.85)
    assert names[3].name == "3" and names[3].size == 0  # empty cluster: its number
    with pytest.raises(ImgclustError):
        name_clusters(probs[:, :10], labels)


def test_cluster_means_ignore_unassigned_rows():
    means, sizes = cluster_class_probabilities(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
                                               np.array([0, -1, 0]))
    assert sizes.tolist() == [2] and means.tolist() == [[0.75, 0.25]]


def test_no_head_means_no_names():
    assert name_clusters_with_head(np.ones((3, 4), np.float32), np.zeros(3, int), None) is None


def test_class_probabilities_in_batches_match_one_pass():
    head = torch.nn.Linear(8, 1000)
    x = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float16)
    p = class_probabilities(x, head, batch_size=3)
    assert p.shape == (10, 1000) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p, class_probabilities(x, head, batch_size=100), atol=1e-6)


@pytest.mark.shared_data
def test_efficientnet_head_names_real_cifar_clusters(cifar10_dir):
    """The head applied to cached pooled features gives the backbone's own logits, and names true-class
    clusters of real photos with a synset on the right branch (vehicles vs animals)."""
    from imgclust.backbones import create_backbone
    from imgclust.features import extract_features
    from imgclust.data import PathListDataset

    paths, labels, names = cifar10_subset_paths(cifar10_dir, "test", 6, ["automobile", "frog"])
    backbone = create_backbone("efficientnet_lite0")
    head = backbone.class_head()
    fs = extract_features(PathListDataset(paths), backbone, use_cache=False, batch_size=12, num_workers=0,
                          progress=False)
    features = np.asarray(fs.features)
    # the head on pooled features equals the package's own full forward (pooling -> dropout(eval) -> _fc)
    x = backbone.normalize(torch.stack([backbone.preprocess.to_uint8_tensor(
        PathListDataset(paths[:1]).load(0))]))
    with torch.no_grad():
        full = head(backbone(x))
    np.testing.assert_allclose(full.numpy()[0], head(torch.as_tensor(features[:1], dtype=torch.float32))
                               .detach().numpy()[0], atol=1e-2)
    named = name_clusters_with_head(features, labels, head)
    h = imagenet_hierarchy()
    vehicle, animal = h.row("n04524313"), h.row("n00015388")
    car_cluster, frog_cluster = named
    assert h.covers[h.row(car_cluster.synset)][h.covers[vehicle]].any()
    assert not h.covers[h.row(car_cluster.synset)][h.covers[animal]].any()
    assert h.covers[h.row(frog_cluster.synset)][h.covers[animal]].any()
    assert not h.covers[h.row(frog_cluster.synset)][h.covers[vehicle]].any()


def test_class_heads_of_backbones(tmp_path):
    """A timm checkpoint with its 1000-class classifier gives that classifier on the pooled features; headless or
    random weights give None (names fall back to numbers)."""
    import timm
    from safetensors.torch import save_file

    from imgclust.backbones import create_backbone

    full = timm.create_model("resnet18", num_classes=1000).eval()
    save_file(full.state_dict(), tmp_path / "r18.safetensors")
    backbone = create_backbone("resnet18", weights=str(tmp_path / "r18.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.class_head()(backbone(x)), full(x))
    headless = timm.create_model("resnet18", num_classes=0)
    save_file(headless.state_dict(), tmp_path / "headless.safetensors")
    assert create_backbone("resnet18", weights=str(tmp_path / "headless.safetensors")).class_head() is None
    assert create_backbone("resnet18", weights="random").class_head() is None
    assert create_backbone("efficientnet_lite0", weights="random").class_head() is None
