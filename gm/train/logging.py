"""What a run writes for people: metrics.jsonl, TensorBoard events, PNG sample grids (with their prompts
as row labels for text-to-image), WAV files with a waveform / spectrogram picture for audio, and text
files for text.

Only process 0 writes; the other processes get writers that do nothing, so callers never branch.
"""
import csv
import json
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw


def image_grid(images, ncol=None, pad=1, min_cell=32):
    """uint8 [N, H, W, C] in [0, 255] -> one uint8 [rows, cols, C] grid, cells upscaled (nearest) so
    small images (8x8 digits) stay visible; C is 1 or 3."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"image_grid expects uint8 [N, H, W, C], got {images.dtype} {images.shape}.")
    n, h, w, c = images.shape
    up = max(1, math.ceil(min_cell / max(h, w)))
    images = images.repeat(up, axis=1).repeat(up, axis=2)
    h, w = h * up, w * up
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return grid


def save_image_grid(path, images, ncol=None):
    """Write uint8 [N, H, W, C] images in [0, 255] to `path` as one PNG grid; returns the grid."""
    grid = image_grid(images, ncol)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return grid


def captioned_grid(images, captions, min_cell=32):
    """uint8 [N, H, W, C] images and the prompt each was drawn for -> one uint8 RGB grid with a row per
    distinct prompt (in order of first appearance): the prompt written on the left, its images after."""
    images = np.asarray(images)
    if len(captions) != len(images):
        raise ValueError(f"captioned_grid got {len(images)} images and {len(captions)} captions.")
    order = list(dict.fromkeys(captions))
    rows = [[i for i, c in enumerate(captions) if c == caption] for caption in order]
    ncol = max(len(r) for r in rows)
    blank = np.full_like(images[:1], 255)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(measure.textlength(c) for c in order)) + 12
    strips = []
    for caption, row in zip(order, rows):
        cells = np.concatenate([images[row]] + [blank] * (ncol - len(row)))
        strip = image_grid(cells, ncol=ncol, min_cell=min_cell)
        strip = np.repeat(strip, 3, axis=-1) if strip.shape[-1] == 1 else strip
        label = Image.new("RGB", (label_width, strip.shape[0]), "white")
        ImageDraw.Draw(label).text((4, strip.shape[0] // 2), caption, fill="black", anchor="lm")
        strips.append(np.concatenate([np.asarray(label), strip], axis=1))
    return np.concatenate(strips)


def save_captioned_grid(path, images, captions):
    """`captioned_grid` as a PNG at `path`, and the prompt of every image, one per line in image order,
    in PATH.txt beside it; returns the grid."""
    grid = captioned_grid(images, captions)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
        f.writelines(f"{caption}\n" for caption in captions)
    return grid


def save_text_samples(path, tokens, tokenizer):
    """int token ids [N, T] -> their decoded texts (`gm.tokenize`), written to `path` (UTF-8), each below
    a '=== sample i ===' line; returns the texts."""
    texts = [tokenizer.decode(row) for row in np.asarray(tokens)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(f"=== sample {i} ===\n{text}\n\n")
    return texts


def save_audio_samples(path, pcm, sample_rate, ncol=2, max_pictures=16):
    """int16 PCM clips [N, T] -> PATH_STEM_i.wav for each clip and, at `path`, one PNG of the first
    `max_pictures` clips' waveforms above their log-mel spectrograms (`gm.audio.clip_picture`), `ncol`
    per row, in file order. Returns the picture."""
    from gm import audio  # jax.numpy for the spectrogram; only when audio is written

    pcm = np.asarray(pcm)
    if pcm.ndim != 2 or pcm.dtype != np.int16:
        raise ValueError(f"save_audio_samples expects int16 PCM [N, T], got {pcm.dtype} {pcm.shape}.")
    stem = os.path.splitext(path)[0]
    for i, clip in enumerate(pcm):
        audio.write_wav(f"{stem}_{i:03d}.wav", clip, sample_rate)
    pictures = np.stack([audio.clip_picture(clip, sample_rate) for clip in pcm[:max_pictures]])
    grid = image_grid(pictures, ncol=ncol, pad=4, min_cell=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def scatter_image(points, reference=None, size=320, lim=None):
    """2-D points [N, 2] (and optional reference points, e.g. a mixture's modes, drawn as red crosses)
    -> uint8 [size, size, 3]: black dots on white, axes through 0, square limits [-lim, lim] (default:
    1.15 times the largest coordinate seen)."""
    points = np.asarray(points, np.float64)
    ref = None if reference is None else np.asarray(reference, np.float64)
    if lim is None:
        finite = points[np.all(np.isfinite(points), axis=1)]
        extent = [np.abs(a).max() for a in (finite, ref) if a is not None and a.size]
        lim = 1.15 * max(extent + [1e-6])
    to_pixel = lambda p: ((p[:, 0] + lim) / (2 * lim) * (size - 1), (lim - p[:, 1]) / (2 * lim) * (size - 1))
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(size / 2, 0), (size / 2, size)], fill=(220, 220, 220))
    draw.line([(0, size / 2), (size, size / 2)], fill=(220, 220, 220))
    for x, y in zip(*to_pixel(points[np.all(np.isfinite(points), axis=1)])):
        draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=(0, 0, 0))
    if ref is not None:
        for x, y in zip(*to_pixel(ref)):
            draw.line([(x - 4, y - 4), (x + 4, y + 4)], fill=(220, 0, 0), width=2)
            draw.line([(x - 4, y + 4), (x + 4, y - 4)], fill=(220, 0, 0), width=2)
    return np.asarray(image)


def save_scatter(path, points, reference=None, lim=None):
    """`scatter_image` written to `path` as PNG; returns the image."""
    image = scatter_image(points, reference, lim=lim)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def density_grid(lim, size):
    """The pixel centres of a size x size picture of [-lim, lim]^2, row 0 at the top: float32 [size^2, 2]."""
    centres = (np.arange(size) + 0.5) / size * 2 * lim - lim
    xx, yy = np.meshgrid(centres, centres[::-1])
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)


def histogram_log_density(points, lim, size):
    """log of a normalised 2-D histogram of points [N, 2] on the cells of `density_grid(lim, size)`:
    float [size^2], nats; -inf where a cell is empty. The density picture of a model without a density."""
    edges = np.linspace(-lim, lim, size + 1)
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=[edges, edges])
    density = counts[::-1] / (len(points) * (edges[1] - edges[0]) ** 2)  # row 0 at the top
    with np.errstate(divide="ignore"):
        return np.log(density).ravel()


def density_image(log_density, size):
    """log-densities at `density_grid(lim, size)` [size^2] -> uint8 [size, size, 3]: the density (not its
    log) from white (0) to dark blue (its maximum); -inf is white."""
    d = np.exp(np.asarray(log_density, np.float64).reshape(size, size))
    d = np.where(np.isfinite(d), d, 0.0)
    v = d / max(d.max(), 1e-300)
    colour = np.array([255.0, 255.0, 255.0]) - v[..., None] * np.array([225.0, 195.0, 105.0])
    return np.clip(colour, 0, 255).astype(np.uint8)


def save_density_image(path, log_density, size):
    """`density_image(log_density, size)` written to `path` as PNG; returns the image."""
    image = density_image(log_density, size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def save_density(path, log_density_fn, lim, size=256):
    """Evaluates log_density_fn (points [N, 2] -> [N] nats) on the grid of [-lim, lim]^2 and writes the
    `density_image` to `path` as PNG; returns the image."""
    return save_density_image(path, log_density_fn(density_grid(lim, size)), size)


def save_table(directory, stem, rows, markdown, header=None):
    """A results table (a list of dicts) as DIRECTORY/STEM.json (the rows, or {**header, 'rows': rows}),
    STEM.csv (columns in the order the rows give them) and STEM.md (`markdown`), which is also printed."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{stem}.json"), "w") as f:
        json.dump(rows if header is None else {**header, "rows": rows}, f, indent=2)
    with open(os.path.join(directory, f"{stem}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(directory, f"{stem}.md"), "w") as f:
        f.write(markdown)
    print(markdown)


def drop_records_after(path, step):
    """Rewrite the metrics.jsonl at `path` without the records of steps after `step` (and without a
    torn last line), atomically; nothing happens when there is nothing to drop."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if record.get("step", 0) <= step:
            kept.append(line.rstrip("\n") + "\n")
    if kept != lines:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


class MetricWriter:
    """Appends scalars to WORKDIR/metrics.jsonl and TensorBoard events in WORKDIR; images to TB.

    `resume_step`: a run resumed from that step's checkpoint first drops what an interrupted run had
    logged after it (metrics.jsonl records, and TensorBoard purges those events), so each step is
    logged once, by the run whose parameters carried on.
    """

    def __init__(self, workdir, enabled=True, resume_step=None):
        self.enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            if resume_step is not None:
                drop_records_after(path, resume_step)
            self._jsonl = open(path, "a")
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(workdir, flush_secs=30,
                                     purge_step=None if resume_step is None else resume_step + 1)

    def write_scalars(self, step, scalars):
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), int(step))

    def write_images(self, step, name, grid):
        """grid: uint8 [H, W, C]."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(grid), int(step), dataformats="HWC")

    def write_texts(self, step, name, texts, max_texts=4):
        """The first `max_texts` texts as TensorBoard text NAME/i (shown as preformatted)."""
        if self.enabled:
            for i, text in enumerate(texts[:max_texts]):
                self._tb.add_text(f"{name}/{i}", "    " + text.replace("\n", "\n    "), int(step))

    def write_audio(self, step, name, pcm, sample_rate, max_clips=4):
        """int16 PCM [N, T]: the first `max_clips` clips as TensorBoard audio NAME/i (WAV encoded here, so
        tensorboardX needs no sound library)."""
        if not self.enabled:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        from gm.audio import wav_bytes

        for i, clip in enumerate(np.asarray(pcm)[:max_clips]):
            sound = Summary.Audio(sample_rate=float(sample_rate), num_channels=1, length_frames=len(clip),
                                  encoded_audio_string=wav_bytes(clip, sample_rate), content_type="audio/wav")
            self._tb.file_writer.add_summary(Summary(value=[Summary.Value(tag=f"{name}/{i}", audio=sound)]),
                                             int(step))

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
