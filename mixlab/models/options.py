"""Log-likelihoods of options after a prompt: the shared-prefix layouts and the per-option reference path.

The options of a question share everything before the answer, and the questions on one image share the image and
the template around it. Questions are grouped by image (`_plan`); a chunk of groups is scored in one of two layouts:
- a tree, one forward pass (attention "sdpa" or "eager", which take a custom 4D mask): one row per group holding
  the shared ids once (image tokens expanded, with the pixel values), then per question the rest of its prompt and
  each of its options; the mask lets a token see only its own branch and the positions continue each branch;
- a growing key/value cache, three passes (other attention kernels, e.g. flash attention, take only 2D masks):
  1. one row per group: its shared ids, with the pixel values;
  2. one row per question: the rest of its prompt, on top of its group's row;
  3. one row per option: the option's ids, on top of its question's row.
  Rows are left-padded in passes 1 and 2 (the last column holds each row's last token) and right-padded in pass 3.
Positions are explicit in both, so padding never shifts them. Ids and labels are `mixlab.models.encoding`'s, the
image once. The reference path (`reference_logprobs`) collates and runs every (prompt, option) pair in full.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mixlab.data import IMAGE_TOKEN
from mixlab.models.collator import IGNORE, VisionCollator, load_image
from mixlab.models.encoding import (
    Images,
    PromptItem,
    Unsupported,
    fast_encoding_ok,
    image_token_of,
    images_of,
    pad,
    pad_id,
    prompt_row,
    tokenize_chats,
)
from mixlab.models.forward import (
    Progress,
    accepts,
    agrees_with_reference,
    chunks,
    eval_mode,
    label_logprobs,
    summed_logprobs,
    to_device,
)
from mixlab.models.pixels import image_inputs
from mixlab.models.templates import training_template


def _image_key(image: Any) -> tuple[Any, ...] | None:
    """Equal for images with the same pixels (None without an image)."""
    if image is None:
        return None
    rgb = load_image(image)
    return (rgb.size, hashlib.blake2b(rgb.tobytes(), digest_size=16).digest())


def item_key(item: PromptItem) -> tuple[Any, ...]:
    """Equal for items that render the same prompt: same text, same image pixels."""
    return (item.text.replace(IMAGE_TOKEN, "").strip(), _image_key(item.image))


@dataclass
class _Question:
    """One item's options as token ids, with the image placeholder not yet expanded."""

    prompt: list[int]  # the ids before the first option id, shared by all options
    continuations: list[list[int]]  # per option, the ids after the prompt
    labels: list[list[int]]  # per option, its trained ids (IGNORE elsewhere)
    placeholder: int | None  # the index of the image placeholder in prompt


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    return next((t for t in range(n) if a[t] != b[t]), n)


def _encode_questions(
    processor: Any, template: str, groups: Sequence[tuple[PromptItem, list[str]]]
) -> list[_Question | None]:
    """Each item's options tokenized (`tokenize_chats`) and split where they part; None for an item whose prompt is
    too short to split or holds its image placeholder elsewhere than once (the reference path scores it)."""
    _, image_id = image_token_of(processor)
    chats = [prompt_row(item, opt)["messages"] for item, opts in groups for opt in opts]
    encoded = iter(tokenize_chats(processor, template, chats))
    out: list[_Question | None] = []
    for item, opts in groups:
        rows = [next(encoded) for _ in opts]
        first = rows[0][0]
        trained = [next((t for t, lab in enumerate(labels) if lab != IGNORE), len(labels)) for _, labels in rows]
        cut = min([*trained, *(_common_length(ids, first) for ids, _ in rows)])
        prompt = first[:cut]
        placeholder: int | None = None
        if image_id is None:
            ok = item.image is None
        elif item.image is None:
            ok = all(image_id not in ids for ids, _ in rows)
        else:
            ok = sum(ids.count(image_id) for ids, _ in rows) == len(rows) and prompt.count(image_id) == 1
            placeholder = prompt.index(image_id) if ok else None
        ok = ok and cut >= 2 and (placeholder is None or placeholder < cut - 1)  # pass 2 needs an id after the image
        question = _Question(prompt, [ids[cut:] for ids, _ in rows], [lab[cut:] for _, lab in rows], placeholder)
        out.append(question if ok else None)
    return out


def _plan(questions: Sequence[_Question], keys: Sequence[Any], batch_size: int) -> list[list[tuple[int, list[int]]]]:
    """Chunks of at most `batch_size` questions, each a list of (shared length, question indices): the questions on
    one image (or all text-only ones) share their longest common prompt prefix, up to one id before the shortest
    prompt's end and past the image placeholder; groups without such a prefix are split into single questions."""
    by_key: dict[Any, list[int]] = {}
    for q, key in enumerate(keys):
        by_key.setdefault(key, []).append(q)
    groups: list[tuple[int, list[int]]] = []
    for members in by_key.values():
        for start in range(0, len(members), batch_size):
            part = members[start : start + batch_size]
            first = questions[part[0]].prompt
            shared = min(
                min(len(questions[q].prompt) for q in part) - 1,
                *(_common_length(questions[q].prompt, first) for q in part),
            )
            placed = all((questions[q].placeholder or 0) < shared for q in part)
            if shared >= 1 and placed:
                groups.append((shared, part))
            else:
                groups += [(len(questions[q].prompt) - 1, [q]) for q in part]
    chunks: list[list[tuple[int, list[int]]]] = []
    count = 0
    for group in groups:
        if not chunks or count + len(group[1]) > batch_size:
            chunks.append([])
            count = 0
        chunks[-1].append(group)
        count += len(group[1])
    return chunks


def _select_rows(cache: Any, rows: Any) -> Any:
    """A copy of a key/value cache holding only the given batch rows, in that order (repeats allowed)."""
    import copy

    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    device = next((layer.keys.device for layer in cache.layers if getattr(layer, "keys", None) is not None), None)
    out.batch_select_indices(rows.to(device) if device is not None else rows)
    return out


class _Extend:
    """One forward pass that extends a key/value cache by a batch of id rows at explicit positions."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_arg = "cache" if accepts(model, "cache") else "past_key_values"  # renamed in transformers 5.x
        self.keep_arg = accepts(model, "logits_to_keep")

    def __call__(self, ids: Any, mask: Any, positions: Any, cache: Any, *, last_only: bool, **extra: Any) -> Any:
        """Logits of every new position, or of the last column only; `mask` covers the cache and the new ids."""
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = 1
        batch = to_device({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **extra}, self.model)
        logits = self.model(**batch, **kwargs).logits
        return logits[:, -1] if last_only else logits


def _sum_logprobs(predict: Any, labels: Any) -> list[tuple[float, bool]]:
    """Per row, (sum of log-probs, all greedy) of the trained labels, `predict[:, t]` being the logits for token t."""
    sums, greedy = summed_logprobs(predict, labels)
    return list(zip(sums.tolist(), greedy.tolist(), strict=True))


def _by_question(
    questions: Sequence[_Question], order: list[int], flat: list[tuple[float, bool]]
) -> dict[int, list[tuple[float, bool]]]:
    """The option scores `flat`, laid out question by question in `order`, split into each question's list."""
    out: dict[int, list[tuple[float, bool]]] = {}
    k = 0
    for q in order:
        n = len(questions[q].continuations)
        out[q], k = flat[k : k + n], k + n
    return out


def _score_chunk(
    extend: _Extend,
    processor: Any,
    images: Images,
    questions: Sequence[_Question],
    pictures: Sequence[Any],
    chunk: list[tuple[int, list[int]]],
    batch_size: int,
) -> dict[int, list[tuple[float, bool]]]:
    """The three passes over one chunk of (shared length, question indices) groups; scores by question index."""
    import torch
    from transformers import DynamicCache

    # 1. one row per group: its shared ids, image tokens expanded, with the pixel values
    heads = [
        (shared, questions[part[0]], [pictures[part[0]]] if pictures[part[0]] is not None else [])
        for shared, part in chunk
    ]
    rows1 = [images.expand(processor, q.prompt[:shared], [IGNORE] * shared, pics)[0] for shared, q, pics in heads]
    filler = pad_id(processor)
    ids1, mask1 = pad(rows1, filler, left=True)
    cache = DynamicCache()
    extra = image_inputs(processor, [pics for _, _, pics in heads])
    extend(ids1, mask1, (mask1.cumsum(1) - 1).clamp_min(0), cache, last_only=True, **extra)

    # 2. one row per question: the rest of its prompt; its last column predicts the first option id
    order = [q for _, part in chunk for q in part]
    owner1 = torch.tensor([g for g, (_, part) in enumerate(chunk) for _ in part])
    ids2, mask2 = pad([questions[q].prompt[shared:] for shared, part in chunk for q in part], filler, left=True)
    mask12 = torch.cat([mask1[owner1], mask2], dim=1)
    positions2 = mask1.sum(1)[owner1, None] + (mask2.cumsum(1) - 1).clamp_min(0)
    cache = _select_rows(cache, owner1)
    last = extend(ids2, mask12, positions2, cache, last_only=True)

    # 3. one row per option, at most batch_size rows a pass
    pairs = [
        (r, ids, labels)
        for r, q in enumerate(order)
        for ids, labels in zip(questions[q].continuations, questions[q].labels, strict=True)
    ]
    length12 = mask12.sum(1)
    flat: list[tuple[float, bool]] = []
    for sub in chunks(len(pairs), batch_size):
        owner2 = torch.tensor([pairs[i][0] for i in sub])
        ids3, mask3 = pad([pairs[i][1] for i in sub], filler, left=False)
        labels3, _ = pad([pairs[i][2] for i in sub], IGNORE, left=False)
        positions3 = length12[owner2, None] + torch.arange(ids3.shape[1])[None, :]
        mask = torch.cat([mask12[owner2], mask3], dim=1)
        logits = extend(ids3, mask, positions3, _select_rows(cache, owner2), last_only=False)
        # the logits for option id t: the question's last column for t = 0, else option position t - 1
        predict = torch.cat([last[owner2.to(last.device), None], logits[:, :-1]], dim=1)
        flat += _sum_logprobs(predict, labels3)
    return _by_question(questions, order, flat)


def _tree_masks(model: Any) -> bool:
    """Whether the language model's attention takes a custom 4D mask (sdpa, eager) for the one-pass tree layout."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


def _tree_attention(branches: list[list[int]], options: list[list[int]], dtype: Any) -> Any:
    """The additive 4D mask (rows, 1, n, n) of tree rows: a token sees the earlier tokens of the shared part (branch
    -1), of its own question's prompt (same branch, option -1) and of its own option; padding sees only itself."""
    import torch

    width = max(len(b) for b in branches)
    branch = torch.full((len(branches), width), -2, dtype=torch.long)  # padding: a branch of its own
    option = torch.full((len(branches), width), -1, dtype=torch.long)
    for r, (b, o) in enumerate(zip(branches, options, strict=True)):
        branch[r, : len(b)] = torch.tensor(b, dtype=torch.long)
        option[r, : len(o)] = torch.tensor(o, dtype=torch.long)
    column = torch.arange(width)
    kb, qb, ko, qo = branch[:, None, :], branch[:, :, None], option[:, None, :], option[:, :, None]
    visible = (column[None, None, :] <= column[None, :, None]) & (kb != -2)
    visible &= (kb == -1) | ((kb == qb) & ((ko == -1) | (ko == qo)))
    visible |= torch.eye(width, dtype=torch.bool)[None]
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def _score_chunk_tree(
    model: Any,
    processor: Any,
    images: Images,
    questions: Sequence[_Question],
    pictures: Sequence[Any],
    chunk: list[tuple[int, list[int]]],
) -> dict[int, list[tuple[float, bool]]]:
    """One pass over a chunk, one row per group laid out as a tree: the shared ids (image tokens expanded), then per
    question the rest of its prompt followed by each of its options. The mask lets a token see only its own branch
    (the shared ids, its question's prompt, its own option) and explicit positions continue each branch, so every
    option is scored as if it followed its prompt alone."""
    import torch

    rows: list[list[int]] = []
    positions: list[list[int]] = []
    branches: list[list[int]] = []  # per token: -1 shared, else its question
    options: list[list[int]] = []  # per token: -1 shared or prompt, else its option
    targets: list[tuple[int, list[int], list[int]]] = []  # per option: row, the columns predicting its ids, labels
    order: list[int] = []
    for r, (shared, part) in enumerate(chunk):
        pics = [pictures[part[0]]] if pictures[part[0]] is not None else []
        ids = images.expand(processor, questions[part[0]].prompt[:shared], [IGNORE] * shared, pics)[0]
        base = len(ids)
        pos, branch, option = list(range(base)), [-1] * base, [-1] * base
        for q in part:
            order.append(q)
            rest = questions[q].prompt[shared:]
            ids, pos = ids + rest, pos + list(range(base, base + len(rest)))
            branch, option = branch + [q] * len(rest), option + [-1] * len(rest)
            last, after = len(ids) - 1, base + len(rest)
            for j, (cont, labels) in enumerate(zip(questions[q].continuations, questions[q].labels, strict=True)):
                targets.append((r, [last, *range(len(ids), len(ids) + len(cont) - 1)], labels))
                ids, pos = ids + cont, pos + list(range(after, after + len(cont)))
                branch, option = branch + [q] * len(cont), option + [j] * len(cont)
        rows.append(ids)
        positions.append(pos)
        branches.append(branch)
        options.append(option)
    input_ids, _ = pad(rows, pad_id(processor), left=False)
    position_ids, _ = pad(positions, 0, left=False)
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    batch = {
        "input_ids": input_ids,
        "attention_mask": _tree_attention(branches, options, dtype),
        "position_ids": position_ids,
        **image_inputs(processor, [[pictures[part[0]]] if pictures[part[0]] is not None else [] for _, part in chunk]),
    }
    needed = sorted({c for _, cols, _ in targets for c in cols})
    kwargs: dict[str, Any] = {}
    column = {c: c for c in needed}
    if len(needed) < input_ids.shape[1] and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = torch.tensor(needed, device=model.device)
        column = {c: i for i, c in enumerate(needed)}
    logits = model(**to_device(batch, model), use_cache=False, **kwargs).logits
    n = max(len(labels) for _, _, labels in targets)
    row_index = torch.tensor([[r] * n for r, _, _ in targets])
    col_index = torch.tensor([[column[c] for c in cols] + [0] * (n - len(cols)) for _, cols, _ in targets])
    labels_, _ = pad([labels for _, _, labels in targets], IGNORE, left=False)
    flat = _sum_logprobs(logits[row_index.to(logits.device), col_index.to(logits.device)], labels_)
    return _by_question(questions, order, flat)


_CHECKED: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], bool]] = weakref.WeakKeyDictionary()


def shared_prefix_logprobs(
    model: Any,
    processor: Any,
    groups: Sequence[tuple[PromptItem, list[str]]],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, is greedy) of each option of each (item, options) group, by the shared layouts (see the
    module's docstring).

    Items that cannot be split (and all items, where this encoding does not match `VisionCollator` for this
    processor, or where the model's first question scores differently from the reference path) are scored by the
    reference path."""
    import torch

    if not groups:
        return []
    total = sum(len(opts) for _, opts in groups)
    template = training_template(processor)
    images = images_of(processor)
    pictures = [load_image(item.image) if item.image is not None else None for item, _ in groups]
    questions: list[_Question | None]
    try:
        questions = _encode_questions(processor, template, groups)
        kinds = {pictures[g] is not None: g for g in reversed(range(len(groups))) if questions[g] is not None}
        for g in kinds.values():
            if not fast_encoding_ok(processor, template, prompt_row(groups[g][0], groups[g][1][0])):
                raise Unsupported("the encoding differs from VisionCollator's")
        for g, question in enumerate(questions):  # every image size now: an unusable expansion fails here
            if question is not None and pictures[g] is not None:
                images.expansion(processor, pictures[g])
    except Unsupported:
        questions = [None] * len(groups)
    out: list[list[tuple[float, bool]]] = [[] for _ in groups]
    fallback = [g for g, q in enumerate(questions) if q is None]
    report = (lambda d, _: progress(d, total)) if progress else None
    if fallback:
        for g, scores in zip(
            fallback,
            _reference_groups(model, processor, [groups[g] for g in fallback], batch_size, report),
            strict=True,
        ):
            out[g] = scores
    done = sum(len(groups[g][1]) for g in fallback)
    live = [g for g, q in enumerate(questions) if q is not None]
    if not live:
        return out
    kept = [q for q in questions if q is not None]
    kept_pictures = [pictures[g] for g in live]
    keys = [_image_key(picture) for picture in kept_pictures]
    tree = _tree_masks(model)
    extend = _Extend(model)

    def score(chunk: list[tuple[int, list[int]]]) -> dict[int, list[tuple[float, bool]]]:
        if tree:
            return _score_chunk_tree(model, processor, images, kept, kept_pictures, chunk)
        return _score_chunk(extend, processor, images, kept, kept_pictures, chunk, batch_size)

    with torch.inference_mode(), eval_mode(model):
        checked = _CHECKED.setdefault(model, {})
        if (template, tree) not in checked:  # once per model: its first question both ways
            item, opts = groups[live[0]]
            first = score(_plan(kept[:1], keys[:1], batch_size)[0])[0]
            checked[(template, tree)] = agrees_with_reference(
                model, first, reference_logprobs(model, processor, [item] * len(opts), opts, batch_size=batch_size)
            )
        if not checked[(template, tree)]:
            warnings.warn(
                f"{type(model).__name__}: shared-prefix option scores differ from the per-option ones; "
                "scoring every option in full",
                stacklevel=3,
            )
            return _reference_groups(model, processor, groups, batch_size, progress)
        for chunk in _plan(kept, keys, batch_size):
            by_question = score(chunk)
            for q, scored in by_question.items():
                out[live[q]] = scored
            done += sum(len(scored) for scored in by_question.values())
            if progress:
                progress(done, total)
    return out


def _reference_groups(
    model: Any,
    processor: Any,
    groups: Sequence[tuple[PromptItem, list[str]]],
    batch_size: int,
    progress: Progress | None,
) -> list[list[tuple[float, bool]]]:
    """Every group's options by the reference path."""
    flat = iter(
        reference_logprobs(
            model,
            processor,
            [item for item, opts in groups for _ in opts],
            [opt for _, opts in groups for opt in opts],
            batch_size=batch_size,
            progress=progress,
        )
    )
    return [[next(flat) for _ in opts] for _, opts in groups]


def reference_logprobs(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """The per-option path: every (prompt, continuation) pair collated and run in full, image included."""
    collator = VisionCollator(processor)
    out: list[tuple[float, bool]] = []
    for chunk in chunks(len(items), batch_size):
        batch = collator([prompt_row(items[i], continuations[i]) for i in chunk])
        sums, _, greedy = label_logprobs(model, dict(batch))
        out.extend(zip(sums.tolist(), greedy.tolist(), strict=True))
        if progress:
            progress(chunk.stop, len(items))
    return out
