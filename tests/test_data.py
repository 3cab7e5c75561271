"""gm.data: the datasets, the resumable batch order, and the offline failure mode. Nothing downloads."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tfds_metadata

from gm import caption_datasets, captions, data, translation_datasets


def _indexed(n, image_shape=None):
    """A tiny dataset whose 'label' is the example's index, so a batch says which examples it holds."""
    split = {'label': np.arange(n, dtype=np.int32)}
    if image_shape is not None:
        # Distinct, left-right asymmetric images: a mirrored image never equals the original.
        split['image'] = (np.arange(n * np.prod(image_shape)) % 251).astype(np.uint8).reshape(
            n, *image_shape)
    info = data.DatasetInfo('indexed', image_shape or (1,), 8, n, n, n)
    return data.Dataset(info, split, split)


@pytest.fixture(scope='module')
def digits():
    return data.load('digits')


# --- digits ---------------------------------------------------------------------------------------

def test_digits_shapes_and_levels(digits):
    info = digits.info
    assert (info.shape, info.num_bits, info.num_levels, info.num_classes) == ((8, 8, 1), 4, 16, 10)
    assert (info.num_train, info.num_test, info.num_dims) == (1437, 360, 64)
    for split, n in ((digits.train, 1437), (digits.test, 360)):
        assert set(split) == {'image', 'label'}
        assert split['image'].shape == (n, 8, 8, 1) and split['image'].dtype == np.uint8
        assert split['label'].shape == (n,) and split['label'].dtype == np.int32
        assert split['image'].max() == 15 and split['image'].min() == 0
        assert set(np.unique(split['label'])) == set(range(10))


def test_digits_are_sklearn_digits_with_16_merged_into_15(digits):
    from sklearn.datasets import load_digits
    raw = load_digits()
    assert (raw.images == 16).any()  # the merge is not vacuous
    expected = sorted(np.minimum(im, 15).astype(np.uint8).tobytes() + bytes([int(y)])
                      for im, y in zip(raw.images, raw.target))
    ours = sorted(im.tobytes() + bytes([int(y)])
                  for split in (digits.train, digits.test)
                  for im, y in zip(split['image'], split['label']))
    # Same multiset: train and test together are exactly the 1,797 examples, none lost or doubled.
    assert ours == expected


def test_digits_split_is_fixed(digits):
    np.random.seed(123)  # global NumPy state must not matter
    again = data.load('digits')
    for a, b in ((digits.train, again.train), (digits.test, again.test)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# --- train_batch ----------------------------------------------------------------------------------

def test_train_batch_is_a_pure_function_of_seed_and_step(digits):
    a = data.train_batch(digits, step=7, batch_size=32, seed=1)
    data.train_batch(digits, step=500, batch_size=32, seed=9)  # churn the permutation cache
    b = data.train_batch(digits, step=7, batch_size=32, seed=1)
    assert set(a) == {'image', 'label'} and a['image'].shape == (32, 8, 8, 1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = data.train_batch(digits, step=8, batch_size=32, seed=1)
    d = data.train_batch(digits, step=7, batch_size=32, seed=2)
    assert not np.array_equal(a['image'], c['image'])
    assert not np.array_equal(a['image'], d['image'])


@pytest.mark.parametrize('random_flip', [False, True])
def test_process_shares_concatenate_to_the_global_batch(digits, random_flip):
    kw = dict(step=3, batch_size=48, seed=5, random_flip=random_flip)
    whole = data.train_batch(digits, **kw)
    shares = [data.train_batch(digits, process_index=p, process_count=4, **kw) for p in range(4)]
    for k in whole:
        assert all(s[k].shape[0] == 12 for s in shares)
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shares]), whole[k])


@pytest.mark.parametrize('n,batch_size', [(12, 4), (12, 5), (1437, 100)])
def test_every_epoch_covers_every_example_once(n, batch_size):
    ds = _indexed(n)
    epochs = 5
    steps = -(-epochs * n // batch_size)
    stream = np.concatenate([data.train_batch(ds, step=s, batch_size=batch_size, seed=3)['label']
                             for s in range(steps)])
    orders = [stream[e * n:(e + 1) * n] for e in range(epochs)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(orders[0], orders[1])  # a fresh order each epoch
    # Resuming (here: asking for the steps backwards, cold cache) gives the same stream.
    again = [data.train_batch(ds, step=s, batch_size=batch_size, seed=3)['label']
             for s in reversed(range(steps))]
    np.testing.assert_array_equal(np.concatenate(again[::-1]), stream)


def test_batch_crossing_an_epoch_boundary():
    ds = _indexed(12)
    # step 2 of batch 5 holds global positions 10..14: the last two of epoch 0, the first three of 1.
    batch = data.train_batch(ds, step=2, batch_size=5, seed=0)['label']
    epoch0 = np.random.default_rng([0, 0]).permutation(12)
    epoch1 = np.random.default_rng([0, 1]).permutation(12)
    np.testing.assert_array_equal(batch, np.concatenate([epoch0[10:], epoch1[:3]]))


def test_batch_bigger_than_the_dataset():
    ds = _indexed(3)
    batch = data.train_batch(ds, step=0, batch_size=10, seed=0)['label']
    assert batch.shape == (10,)
    for e in range(3):
        np.testing.assert_array_equal(np.sort(batch[3 * e:3 * e + 3]), np.arange(3))


def test_random_flip_mirrors_exactly_the_chosen_examples():
    ds = _indexed(40, image_shape=(4, 6, 3))
    kw = dict(step=11, batch_size=32, seed=4)
    plain = data.train_batch(ds, **kw)
    flipped = data.train_batch(ds, random_flip=True, **kw)
    np.testing.assert_array_equal(plain['label'], flipped['label'])
    expected = data._flip_mask(4, 11, 32)
    assert 0 < expected.sum() < 32
    is_mirrored = np.all(flipped['image'] == plain['image'][:, :, ::-1], axis=(1, 2, 3))
    is_same = np.all(flipped['image'] == plain['image'], axis=(1, 2, 3))
    np.testing.assert_array_equal(is_mirrored, expected)
    np.testing.assert_array_equal(is_same, ~expected)
    # The coins belong to the global batch: 8 processes flip the same examples.
    shares = [data.train_batch(ds, random_flip=True, process_index=p, process_count=8, **kw)
              for p in range(8)]
    np.testing.assert_array_equal(np.concatenate([s['image'] for s in shares]), flipped['image'])
    assert not np.array_equal(data._flip_mask(4, 12, 32), expected)  # fresh coins every step


# --- eval_batches ---------------------------------------------------------------------------------

@pytest.mark.parametrize('process_count', [1, 4])
@pytest.mark.parametrize('n,limit', [(360, None), (64, None), (10, None), (360, 100)])
def test_eval_batches_cover_each_example_once(n, limit, process_count):
    ds = _indexed(n, image_shape=(2, 2, 1))
    seen = []
    batches = []
    for p in range(process_count):
        batches.append(list(data.eval_batches(ds, batch_size=64, process_index=p,
                                              process_count=process_count, limit=limit)))
        for b in batches[-1]:
            assert set(b) == {'image', 'label', 'mask'} and b['mask'].dtype == bool
            assert b['image'].shape == (64 // process_count, 2, 2, 1)
            assert b['label'].shape == b['mask'].shape == (64 // process_count,)
            seen.extend(b['label'][b['mask']])
    expected = n if limit is None else limit
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == -(-expected // 64)
    np.testing.assert_array_equal(np.sort(seen), np.arange(expected))
    # Global batches in fixed order: the shares of one step concatenate to consecutive examples.
    first = np.concatenate([b[0]['label'] for b in batches])
    np.testing.assert_array_equal(first[:min(64, expected)], np.arange(min(64, expected)))


def test_eval_padding_repeats_the_first_rows():
    ds = _indexed(70, image_shape=(2, 2, 1))
    last = list(data.eval_batches(ds, batch_size=64))[-1]
    np.testing.assert_array_equal(last['label'], np.concatenate([np.arange(64, 70), np.arange(58)]))
    np.testing.assert_array_equal(last['mask'], np.arange(64) < 6)


# --- 2-D toys -------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,num_modes', [('ring8', 8), ('grid25', 25)])
def test_toys(name, num_modes):
    ds = data.load(name)
    info = ds.info
    assert (info.shape, info.num_bits, info.num_levels, info.num_classes) == ((2,), None, None,
                                                                              num_modes)
    modes = data.TOY_MODES[name]
    assert modes.shape == (num_modes, 2)
    for split, n in ((ds.train, info.num_train), (ds.test, info.num_test)):
        assert set(split) == {'x', 'label'}
        assert split['x'].shape == (n, 2) and split['x'].dtype == np.float32
        assert split['label'].dtype == np.int32
        assert set(np.unique(split['label'])) == set(range(num_modes))
        nearest = np.argmin(((split['x'][:, None] - modes[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(nearest, split['label'])
        residual = split['x'] - modes[split['label']]
        np.testing.assert_allclose(residual.std(0), data.TOY_STD, rtol=0.05)
    np.testing.assert_array_equal(data.load(name).train['x'], ds.train['x'])  # fixed seed


def test_toy_mode_geometry():
    np.testing.assert_allclose(np.linalg.norm(data.TOY_MODES['ring8'], axis=1), 2.0, rtol=1e-6)
    assert {tuple(m) for m in data.TOY_MODES['grid25']} == {
        (x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}


# --- errors ---------------------------------------------------------------------------------------

def test_unknown_name_names_the_config_field():
    with pytest.raises(data.DataError, match='config.data.name') as e:
        data.load('imagenet')
    assert all(name in str(e.value) for name in data.DATASETS)


def test_indivisible_batch_names_the_config_field(digits):
    with pytest.raises(data.DataError, match='config.train.batch_size'):
        data.train_batch(digits, step=0, batch_size=30, seed=0, process_count=4)
    with pytest.raises(data.DataError, match='config.train.batch_size'):
        next(data.eval_batches(digits, batch_size=30, process_count=4))


def test_random_flip_on_toys_is_an_error():
    with pytest.raises(data.DataError, match='random_flip'):
        data.train_batch(data.load('ring8'), step=0, batch_size=8, seed=0, random_flip=True)


def test_offline_datasets_never_import_tensorflow():
    code = ("import sys; from gm import data; data.load('digits'); data.load('grid25'); "
            "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, '-c', code], cwd=root, check=True, timeout=60)


# --- MNIST / CIFAR-10 through TFDS (mocked; nothing downloads) -------------------------------------

def test_tfds_datasets_with_mock_data(tmp_path, no_network):
    tfds = pytest.importorskip('tensorflow_datasets')
    metadata = str(tmp_path / 'metadata')
    for name in ('mnist', 'cifar10'):
        write_tfds_metadata(tfds, name, metadata, num_train=7, num_test=7)
    with tfds.testing.mock_data(num_examples=7, data_dir=metadata):
        for name, shape in (('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))):
            ds = data.load(name, data_dir=str(tmp_path / 'unused'))
            info = ds.info
            assert (info.name, info.shape, info.num_bits, info.num_levels) == (name, shape, 8, 256)
            assert (info.num_classes, info.num_train, info.num_test) == (10, 7, 7)
            for split in (ds.train, ds.test):
                assert set(split) == {'image', 'label'}
                assert split['image'].shape == (7, *shape) and split['image'].dtype == np.uint8
                assert split['label'].shape == (7,) and split['label'].dtype == np.int32
            batch = data.train_batch(ds, step=0, batch_size=4, seed=0, random_flip=True)
            assert batch['image'].shape == (4, *shape)


def _assert_one_sentence(message, *parts):
    assert '\n' not in message and message.endswith('.') and message.startswith('CIFAR-10')
    for part in parts:
        assert part in message


def test_cifar10_offline_without_manual_dir_fails_at_once(tmp_path, monkeypatch, no_network):
    tfds = pytest.importorskip('tensorflow_datasets')

    def download_and_prepare(self, *args, **kwargs):
        raise AssertionError('must not try to download when the host cannot be reached')
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
    empty = tmp_path / 'tfds'
    empty.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load('cifar10', data_dir=str(empty))
    _assert_one_sentence(str(e.value), str(empty), 'cannot be reached', 'cifar-10-binary.tar.gz',
                         'config.data.manual_dir', 'tfds build cifar10 --manual_dir', 'config.data.name=digits')
    assert e.value.__cause__ is None and e.value.__context__ is None  # no traceback wall


@pytest.mark.parametrize('failure', [
    ModuleNotFoundError("No module named 'importlib_resources'"),
    OSError("HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): Max retries exceeded\n..."),
])
def test_failed_manual_dir_build_is_one_sentence(tmp_path, monkeypatch, no_network, failure):
    tfds = pytest.importorskip('tensorflow_datasets')
    requests = pytest.importorskip('requests')
    if isinstance(failure, OSError):
        failure = requests.exceptions.ConnectionError(*failure.args)  # what TFDS raises offline
    seen = {}

    def download_and_prepare(self, *args, download_config=None, **kwargs):
        seen['manual_dir'] = download_config.manual_dir
        raise failure
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
    empty, manual = tmp_path / 'tfds', tmp_path / 'manual'
    empty.mkdir()
    manual.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load('cifar10', data_dir=str(empty), manual_dir=str(manual))
    assert str(seen['manual_dir']) == str(manual)
    _assert_one_sentence(str(e.value), str(empty), 'could not be built', type(failure).__name__,
                         'config.data.manual_dir')
    assert e.value.__cause__ is None and e.value.__suppress_context__


# --- text -------------------------------------------------------------------------------------------------

def test_pydoc_text_is_every_training_window_and_non_overlapping_test_windows():
    from gm import text_datasets

    ds = data.load("pydoc", context=32)
    info = ds.info
    assert info.is_text and not info.is_image and not info.is_audio
    assert info.vocab_size == 256 and info.bytes_per_token == 1.0 and info.shape == (32,)
    train_text, test_text = text_datasets.pydoc_texts()
    stream = np.frombuffer(train_text.encode("utf-8"), np.uint8)
    assert info.num_train == len(stream) - 31  # every offset
    np.testing.assert_array_equal(ds.train["tokens"][1000], stream[1000:1032])
    test = np.frombuffer(test_text.encode("utf-8"), np.uint8)
    np.testing.assert_array_equal(ds.test["tokens"].ravel(), test[:info.num_test * 32])  # each byte once
    assert not set(test_text.split("\n\n")[:3]) & set(train_text.split("\n\n"))  # held-out topics
    batch = data.train_batch(ds, step=5, batch_size=8, seed=0)
    assert batch["tokens"].shape == (8, 32) and batch["tokens"].dtype == np.int32
    np.testing.assert_array_equal(batch["tokens"], data.train_batch(ds, step=5, batch_size=8, seed=0)["tokens"])


def test_pydoc_with_a_trained_bpe_and_bad_text_settings():
    ds = data.load("pydoc", context=16, tokenizer="bpe300")
    assert ds.info.vocab_size == 300 and 1.2 < ds.info.bytes_per_token < 3.0  # 44 merges: measured 1.37
    assert ds.train["tokens"].max() < 300 and ds.train["tokens"].min() >= 0
    with pytest.raises(data.DataError, match=r"config.data.tokenizer='words' is not a tokenizer; use 'bytes'"):
        data.load("pydoc", tokenizer="words")
    with pytest.raises(data.DataError, match=r"fewer than config.data.context=10000000"):
        data.load("pydoc", context=10_000_000)


def test_tiny_shakespeare_through_tfds_and_offline(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    metadata = str(tmp_path / "metadata")
    builder = tfds.builder("tiny_shakespeare", data_dir=metadata)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[1], num_bytes=0, filename_template=None)
        for s in ("train", "validation", "test")]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=1, data_dir=metadata):
        ds = data.load("tiny_shakespeare", data_dir=str(tmp_path / "unused"), context=4)
    assert ds.info.vocab_size == 256 and ds.train["tokens"].shape[1] == 4 and ds.info.num_test >= 1
    monkeypatch.setattr(data, "_reachable", lambda host, timeout=5.0: False)
    with pytest.raises(data.DataError, match=r"^tiny_shakespeare is not prepared in .* cannot be reached to "
                                             r"download it: run `tfds build tiny_shakespeare` .*"
                                             r"--config.data.name=pydoc"):
        data.load("tiny_shakespeare", data_dir=str(tmp_path / "empty"), context=8)


def test_coco_captions_are_square_images_with_five_padded_captions(coco_captions, tmp_path, monkeypatch):
    info = coco_captions.info
    assert info.shape == (32, 32, 3) and info.num_bits == 8 and info.captions_per_image == 5 and info.is_image
    assert coco_captions.train["image"].shape == (4, 32, 32, 3) and coco_captions.test["image"].shape == (2, 32, 32, 3)
    caps = coco_captions.train["captions"]
    assert caps.shape == (4, 5, 128) and caps.dtype == np.int16 and caps.min() >= 0 and caps.max() <= captions.PAD
    # Bytes first, then only padding.
    for row in caps.reshape(-1, 128):
        n = int(np.sum(row != captions.PAD))
        assert (row[:n] < 256).all() and (row[n:] == captions.PAD).all()
    np.testing.assert_array_equal(caption_datasets.encode_captions([b"ab", b"x" * 200], 4),
                                  [[97, 98, 256, 256], [120] * 4])
    monkeypatch.setattr(data, "_reachable", lambda host, timeout=5.0: False)
    with pytest.raises(data.DataError, match=r"^coco_captions is not prepared in .* cannot be reached to download "
                                             r"it: run `tfds build coco_captions` .*--config.data.name=digits"):
        data.load("coco_captions", data_dir=str(tmp_path / "empty"))


# --- two unpaired domains (translation) -------------------------------------------------------------

def test_thicken_grows_every_stroke_by_a_pixel_on_each_side():
    image = np.zeros((1, 5, 5, 1), np.uint8)
    image[0, 2, 2, 0] = 9
    cross = translation_datasets.thicken(image)[0, ..., 0]
    assert cross.sum() == 5 * 9 and cross[1:4, 2].tolist() == [9, 9, 9] and cross[2, 1:4].tolist() == [9, 9, 9]


def test_pair_domains_repeats_the_smaller_domain_in_a_shuffled_order():
    rng = np.random.default_rng(0)
    a = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    b = (10 + np.arange(2, dtype=np.uint8)).reshape(2, 1, 1, 1)
    split = translation_datasets.pair_domains(a, np.arange(5), b, np.arange(2), rng)
    assert sorted(split['image_a'].ravel().tolist()) == list(range(5))  # the larger one: each image once
    assert np.bincount(split['image_b'].ravel() - 10).tolist() in ([3, 2], [2, 3])  # the smaller, cycled
    np.testing.assert_array_equal(split['label_b'], split['image_b'].ravel() - 10)  # labels follow their images
    np.testing.assert_array_equal(split['label'], split['label_a'])


def test_digit_strokes_are_unpaired_thin_and_thick_digits():
    ds, digits = data.load('digit_strokes'), data.load('digits')
    info = ds.info
    assert info.domains == ('thin', 'thick') and info.modality == 'domains' and info.shape == (8, 8, 1)
    assert (info.num_bits, info.num_classes, info.num_train, info.num_test) == (4, 10, 719, 180)
    key = lambda im: im.tobytes()  # noqa: E731
    thin = {key(im): label for im, label in zip(digits.train['image'], digits.train['label'])}
    thick = {key(im): label for im, label in zip(translation_datasets.thicken(digits.train['image']),
                                                   digits.train['label'])}
    # Domain A holds digits as they are, B thickened ones, with their own labels ...
    assert all(thin[key(im)] == label for im, label in zip(ds.train['image_a'], ds.train['label_a']))
    assert all(thick[key(im)] == label for im, label in zip(ds.train['image_b'], ds.train['label_b']))
    assert ds.train['image_b'].mean() > 1.5 * ds.train['image_a'].mean()
    # ... from disjoint halves: hardly any A digit's thickened self is in B (the digits repeat a few images).
    in_b = {key(im) for im in ds.train['image_b']}
    thickened_a = translation_datasets.thicken(ds.train['image_a'])
    assert np.mean([key(im) in in_b for im in thickened_a]) < 0.02
    # 718 + 719 digits: the smaller domain's first 718 rows hold each of its images once, then one repeats.
    for d, count in (('a', 718), ('b', 719)):
        first = ds.train[f'first_{d}']
        assert first.sum() == count and first[:count].all()
        assert len({key(im) for im in ds.train[f'image_{d}'][first]}) == len({key(im) for im in ds.train[f'image_{d}']})
    batch = data.train_batch(ds, step=0, batch_size=8, seed=0, random_flip=True)
    assert set(batch) == {'image_a', 'image_b', 'label_a', 'label_b', 'label', 'first_a', 'first_b'}
    assert batch['image_b'].shape == (8, 8, 8, 1)


def test_cycle_gan_with_mock_data_and_offline(tmp_path, monkeypatch, no_network):
    tfds = pytest.importorskip('tensorflow_datasets')
    metadata = str(tmp_path / 'metadata')
    write_tfds_metadata(tfds, 'cycle_gan/horse2zebra', metadata, 3, 3,
                        more_splits=(('trainA', 3), ('trainB', 3), ('testA', 3), ('testB', 3)))
    with tfds.testing.mock_data(num_examples=3, data_dir=metadata):
        ds = data.load('cycle_gan/horse2zebra', data_dir=metadata)
    assert ds.info.domains == ('horse', 'zebra') and ds.info.shape == (256, 256, 3)  # mock images resized
    assert ds.train['image_a'].shape == (3, 256, 256, 3) and ds.train['image_a'].dtype == np.uint8
    assert ds.info.modality == 'domains' and ds.info.num_classes == 1
    assert translation_datasets.domain_names('facades') == ('A', 'B')

    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare',
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError('no download offline')))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(data.DataError) as e:
        data.load('cycle_gan/apple2orange', data_dir=str(empty))
    message = str(e.value)
    assert '\n' not in message and 'cannot be reached' in message and 'tfds build cycle_gan/apple2orange' in message
    assert 'config.data.name=digit_strokes' in message
