"""Preparing a TFDS dataset with errors for people: the one place gm calls `download_and_prepare`."""
from typing import Callable, Optional


def prepared_builder(name: str, data_dir: Optional[str], *, title: str, host: str, how: str,
                     error: Callable[[str], Exception], reachable: Callable[[str], bool],
                     manual_dir: Optional[str] = None, config: Optional[str] = None):
    """The TFDS builder of `name` (builder config `config`), downloaded and prepared if it is not yet.

    What `tfds.load(..., download=True)` does, split in two so that only the download sits inside the
    broad `except` (reading a prepared dataset that fails should fail loudly). When `host` cannot be
    reached and there is no `manual_dir`, or the build fails, `error` gets one sentence: TITLE is not
    prepared in FOLDER and ...: HOW (the fix). `reachable(host)` is asked first because TFDS itself retries
    an unreachable host for minutes.
    """
    import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds

    builder = tfds.builder(f"{name}/{config}" if config else name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not manual_dir and not reachable(host):
        raise error(f"{title} is not prepared in {builder.data_dir_root} and {host} cannot be reached to "
                    f"download it: {how}")
    # The download boundary, caught broadly on purpose: network, SSL, checksum, disk and missing-package
    # failures mean the same to the user. The cause rides along in brackets.
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
    except Exception as e:  # pylint: disable=broad-except
        cause = f"{type(e).__name__}: {e}".splitlines()[0][:160]
        raise error(f"{title} is not prepared in {builder.data_dir_root} and could not be built ({cause}): "
                    f"{how}") from None
    return builder
