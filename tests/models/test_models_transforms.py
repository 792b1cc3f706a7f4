"""Preprocessing: numpy conversion, normalisation and the batched chip augmentation.

The augmentation is checked against torchvision's per-image ``v2.functional.affine`` (the
independent reference) and against exact ``torch.rot90``/``flip`` for right-angle rotations.
"""

import numpy as np
import pytest
import torch

from components.models import (
    ChipAugment,
    Normalize,
    batch_to_tensor,
    build_eval_transform,
    build_train_transform,
    image_to_tensor,
    import_torchvision_submodule,
)


def test_image_to_tensor_layouts_and_dtypes():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = image_to_tensor(gray)
    assert tensor.dtype == torch.float32 and tensor.shape == (1, 3, 4)
    np.testing.assert_allclose(tensor[0].numpy(), gray / 255.0, rtol=1e-6)

    bands = np.random.default_rng(0).integers(0, 65535, size=(5, 6, 3), dtype=np.uint16)
    tensor = image_to_tensor(bands)
    assert tensor.shape == (3, 5, 6)
    np.testing.assert_allclose(tensor.numpy(), np.moveaxis(bands, -1, 0) / 65535.0, rtol=1e-6)

    floats = np.random.default_rng(1).random((4, 4), dtype=np.float64)
    np.testing.assert_allclose(image_to_tensor(floats)[0].numpy(), floats, rtol=1e-6)


def test_batch_to_tensor_layouts():
    assert batch_to_tensor(np.zeros((7, 8, 9), np.uint8)).shape == (7, 1, 8, 9)
    batch = np.random.default_rng(2).integers(0, 255, size=(2, 8, 9, 4), dtype=np.uint8)
    tensor = batch_to_tensor(batch)
    assert tensor.shape == (2, 4, 8, 9) and tensor.is_contiguous()
    np.testing.assert_allclose(tensor.numpy(), np.moveaxis(batch, -1, 1) / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    "array, error, match",
    [
        (np.zeros((3, 3), np.int32), TypeError, "int32"),
        (np.zeros(5, np.uint8), ValueError, r"\(5,\)"),
        ([[0, 1]], TypeError, "list"),
    ],
)
def test_conversion_errors(array, error, match):
    with pytest.raises(error, match=match):
        image_to_tensor(array)


def test_normalize_per_channel_and_broadcast():
    x = torch.rand(2, 3, 4, 4)
    out = Normalize(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))(x)
    expected = (x.numpy() - np.array([0.1, 0.2, 0.3])[:, None, None]) / np.array([0.5, 0.25, 2.0])[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Normalize((0.5,), (0.5,))(x), x * 2 - 1)
    with pytest.raises(ValueError, match="2 values.*3 channels"):
        Normalize((0.1, 0.2), (1.0, 1.0))(x)
    with pytest.raises(ValueError, match="std"):
        Normalize((0.1,), (0.0,))


def test_augment_matches_torchvision_affine_per_image():
    v2f = import_torchvision_submodule("transforms.v2.functional")
    bilinear = import_torchvision_submodule("transforms").InterpolationMode.BILINEAR
    augment = ChipAugment(rotation="any", scale_jitter=0.2, max_shift=0.1, padding_mode="zeros")
    images = torch.rand(12, 2, 33, 29)  # odd, non-square sizes catch centring mistakes
    params = augment.sample_params(12, 33, 29, generator=torch.Generator().manual_seed(3))
    assert params.flip.any() and not params.flip.all()
    result = augment.apply(images, params)
    for i in range(12):
        image = v2f.horizontal_flip(images[i]) if params.flip[i] else images[i]
        expected = v2f.affine(
            image,
            angle=float(params.angle[i]),
            translate=[float(params.shift_x[i]), float(params.shift_y[i])],
            scale=float(params.scale[i]),
            shear=[0.0, 0.0],
            interpolation=bilinear,
        )
        torch.testing.assert_close(result[i], expected, rtol=0, atol=1e-4)


def test_right_angle_rotations_are_pixel_permutations():
    augment = ChipAugment(rotation="right", scale_jitter=0.0, max_shift=0.0)
    images = torch.rand(16, 1, 31, 31)
    params = augment.sample_params(16, 31, 31, generator=torch.Generator().manual_seed(4))
    result = augment.apply(images, params)
    for i in range(16):
        image = images[i].flip(-1) if params.flip[i] else images[i]
        # torchvision's positive angle turns the other way from rot90's positive k.
        expected = torch.rot90(image, k=-int(params.angle[i]) // 90, dims=(-2, -1))
        torch.testing.assert_close(result[i], expected, rtol=0, atol=1e-5)


def test_train_transform_shapes_dtypes_and_determinism():
    transform = build_train_transform(mean=(0.4,), std=(0.2,))
    batch = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    first = transform(batch, generator=torch.Generator().manual_seed(7))
    again = transform(batch, generator=torch.Generator().manual_seed(7))
    other = transform(batch, generator=torch.Generator().manual_seed(8))
    assert first.shape == (6, 1, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Each sample of a batch gets its own draw.
    same_images = transform(batch[:1].repeat(4, 1, 1, 1), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(same_images[0], same_images[1])


def test_generator_leaves_global_rng_alone():
    transform = build_train_transform()
    images = torch.rand(2, 1, 16, 16)  # drawn from the global RNG, so before the snapshot
    state = torch.random.get_rng_state()
    transform(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_single_images_numpy_and_tensor():
    transform = build_train_transform(rotation="right")
    chip = np.random.default_rng(5).integers(0, 255, size=(101, 101), dtype=np.uint8)
    out = transform(chip, generator=torch.Generator().manual_seed(1))
    assert out.shape == (1, 101, 101) and out.dtype == torch.float32
    rgb = torch.rand(3, 20, 20)
    assert build_train_transform(mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))(rgb).shape == (3, 20, 20)


def test_eval_transform_is_plain_normalisation():
    chip = np.random.default_rng(6).integers(0, 255, size=(8, 8, 2), dtype=np.uint8)
    out = build_eval_transform(mean=(0.5, 0.25), std=(0.5, 0.25))(chip)
    expected = (np.moveaxis(chip, -1, 0) / 255.0 - np.array([0.5, 0.25])[:, None, None]) / np.array([0.5, 0.25])[
        :, None, None
    ]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rotation": "sideways"}, "'sideways'"),
        ({"padding_mode": "wrap"}, "'wrap'"),
        ({"scale_jitter": 1.5}, "scale_jitter"),
        ({"max_shift": 0.7}, "max_shift"),
    ],
)
def test_augment_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChipAugment(**kwargs)
