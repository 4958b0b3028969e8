"""The dataset and architecture registries refuse taken names and register in one style."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from torch import nn

from podbench.errors import UserError
from podbench.tasks import (
    ARCHS,
    DATASETS,
    DatasetInfo,
    DatasetSource,
    arch_info,
    dataset_info,
    list_archs,
    list_datasets,
    register_arch,
    register_dataset,
)
from podbench.tasks.datasets import dataset_source
from podbench.tasks.sources import FashionMnist


class _Nothing(DatasetSource):
    def locate(self, root: Path) -> None:
        return None

    def read(self, located, *, image_size):  # type: ignore[no-untyped-def]
        raise AssertionError("never located")


class _Other(_Nothing):
    pass


class _Another(_Nothing):
    pass


FACTS = {
    "num_classes": 2,
    "channels": 1,
    "image_size": 8,
    "mean": (0.5,),
    "std": (0.25,),
    "train_size": None,
    "test_size": None,
}


def test_duplicate_dataset_name_or_alias_is_refused() -> None:
    with DATASETS.scratch():
        for name, aliases in (("cifar10", ()), ("my-cifar", ("cifar-10",))):
            with pytest.raises(UserError) as err:
                register_dataset(name, aliases=aliases, **FACTS)(_Other)
            assert "is already registered by podbench.tasks.sources.Cifar10" in str(err.value)
        assert dataset_info("cifar10").num_classes == 10  # the built-in is untouched
        assert "my-cifar" not in list_datasets()


def test_duplicate_architecture_name_is_refused() -> None:
    with ARCHS.scratch():
        with pytest.raises(
            UserError,
            match="'resnet18' is already registered by "
            r"podbench\.tasks\.archs\.resnet18",
        ):

            @register_arch("resnet18", description="an impostor")
            def impostor(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
                return nn.Flatten(), 1

        assert arch_info("resnet18").description.startswith("ResNet-18")


def test_register_dataset_takes_a_name_and_facts_or_a_dataset_info() -> None:
    with DATASETS.scratch():
        by_name = register_dataset("test-by-name", **FACTS)(_Other)
        info = DatasetInfo(name="test-by-info", **FACTS)
        by_info = register_dataset(info)(_Another)
        assert (
            dataset_source("test-by-name") is by_name and dataset_source("test-by-info") is by_info
        )
        # the registry writes the source in: this test module, as it is in no distribution
        assert dataset_info("test-by-info") == dataclasses.replace(info, source=__name__)
        assert by_name.info.name == "test-by-name" and by_name.info.source == __name__
        with pytest.raises(TypeError, match="not both"):
            register_dataset(info, num_classes=3)
    assert "test-by-name" not in list_datasets()


def test_old_dataset_spelling_is_refused_but_its_folder_still_searched(tmp_path: Path) -> None:
    from podbench.tasks.datasets import candidate_roots

    assert dataset_source("fashion-mnist") is FashionMnist
    with pytest.raises(UserError, match="did you mean 'fashion-mnist'"):
        dataset_info("fashion_mnist")
    # data folders keep their customary underscore spelling
    assert tmp_path / "fashion_mnist" in candidate_roots("fashion-mnist", tmp_path)


def test_architecture_names_list_the_renamed_mobilenet() -> None:
    assert "mobilenet-v2" in list_archs() and "mobilenet_v2" not in list_archs()
