"""Which weight matrices of a model the spectral analysis and the restoration edits work on, found from
the model's own module tree rather than from one family's tensor names (docs/families.md).

The model is built from its config.json on the meta device (no weights, no memory): the decoder layers
are the one ModuleList as long as the text config's `num_hidden_layers`, and every linear map inside a
layer is a matrix, labelled by its leaf name (`LABELS`): q, k, v, o, gate, up, down; a leaf the table
does not know keeps its path as its label, so nothing in a layer goes unanalysed. The input embedding is
`embed`, the output one `lm_head` (absent when it is tied to the embedding and not saved).

Every matrix is read as (out, in), the orientation of `nn.Linear`: GPT-2's Conv1D weights are stored (in,
out) and are transposed. A fused q/k/v map (GPT-2's `c_attn`) is split into its three equal parts along
its outputs, in the order q, k, v, and each part is analysed and edited on its own.

Module paths are mapped to the names in the weights file by exact name, else by the one file name that
ends with it: the Llama-3.2-Vision checkpoint stores its text weights under `language_model.`, the text
model saved after it does not, and both map to the same keys (`layers.3.q`). Models are compared, and
edited, key by key."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

# Leaf name (the last two components of a module's path in its layer, then the last) -> label.
LABELS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
          "down_proj": "down", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"}
FUSED = {"attn.c_attn": ("q", "k", "v")}  # equal parts of the output features, in this order


@dataclass(frozen=True)
class Matrix:
    """One analysed matrix: its key (`layers.{layer}.{module}`, `embed`, `lm_head`), the tensor of the
    weights file that holds it, whether that tensor is stored (in, out), and which part of a fused
    tensor's outputs it is (index, count)."""

    key: str
    layer: int | None
    module: str
    tensor: str
    transposed: bool = False
    part: tuple[int, int] | None = None

    def read(self, weights: Mapping):
        """The matrix as (out, in), from a model's weights."""
        return self._view(weights[self.tensor])

    def write(self, weights: dict, matrix) -> None:
        """`weights` with this matrix replaced by `matrix` (out, in), in the tensor's dtype; the tensor is
        replaced by a new one, never changed in place."""
        tensor = weights[self.tensor].clone()
        self._view(tensor).copy_(matrix.to(tensor.dtype))
        weights[self.tensor] = tensor

    def _view(self, tensor):
        """This matrix inside its tensor, as (out, in): a view, so writing to it writes the tensor."""
        w = tensor.T if self.transposed else tensor
        if self.part:
            index, count = self.part
            size = w.shape[0] // count
            w = w[index * size : (index + 1) * size]
        return w


@dataclass(frozen=True)
class Layout:
    """Where a model's analysed matrices and decoder layers are in its weights file."""

    matrices: tuple[Matrix, ...]
    layer_prefix: str  # the file names of layer i begin with f"{layer_prefix}{i}."
    layers: int
    embed: str  # the input embedding's tensor

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        fields = json.loads(text)
        matrices = tuple(Matrix(**{**m, "part": tuple(m["part"]) if m["part"] else None}) for m in fields.pop("matrices"))
        return cls(matrices=matrices, **fields)

    def check(self, names: Iterable[str], what: str) -> None:
        """An error naming the tensors of this layout that `what`'s weights do not hold."""
        missing = sorted({m.tensor for m in self.matrices} - set(names))
        if missing:
            raise ValueError(f"{what}: its weights lack {len(missing)} tensor(s) of the layout it was analysed "
                             f"with: {', '.join(missing[:5])}")

    def layer_of(self, tensor: str) -> int | None:
        m = re.match(re.escape(self.layer_prefix) + r"(\d+)\.", tensor)
        return int(m.group(1)) if m else None

    def counterpart(self, tensor: str, other: Layout) -> str:
        """The name, in `other`'s weights file, of this model's `tensor` (a layer's tensor or the embedding)."""
        if tensor == self.embed:
            return other.embed
        if self.layer_of(tensor) is None:
            raise ValueError(f"{tensor} is neither in a decoder layer ({self.layer_prefix}N.) nor the embedding")
        return other.layer_prefix + tensor[len(self.layer_prefix) :]


def layout(model_dir: str | Path, names: Iterable[str]) -> Layout:
    """The layout of the model in `model_dir` (its config.json) whose weights file holds `names`. An error
    names what is missing: a config whose layers cannot be found, a module with no tensor in the file."""
    from rlheals import models

    names = set(names)
    model, text = models.skeleton(model_dir)
    count = text.num_hidden_layers
    stack_path, stack = decoder_layers(model, count, str(model_dir))
    matrices, layer_prefix = [], None
    for i, layer in enumerate(stack):
        for rel, module in layer.named_modules():
            if not _is_linear(module):
                continue
            path = f"{stack_path}.{i}.{rel}.weight"
            tensor = _file_name(path, names, model_dir)
            if layer_prefix is None:  # the file's names are the tree's, after a prefix (or none)
                layer_prefix = tensor[: len(tensor) - len(path)] + f"{stack_path}."
            transposed = _is_conv1d(module)  # y = x W + b, W stored (in, out)
            leaf2, leaf = ".".join(rel.split(".")[-2:]), rel.split(".")[-1]
            if leaf2 in FUSED:
                parts = FUSED[leaf2]
                outputs = module.weight.shape[1 if transposed else 0]
                if outputs % len(parts):
                    raise ValueError(f"{model_dir}: {tensor} has {outputs} outputs, not {len(parts)} equal parts "
                                     f"({', '.join(parts)})")
                matrices += [Matrix(f"layers.{i}.{label}", i, label, tensor, transposed, (j, len(parts)))
                             for j, label in enumerate(parts)]
            else:
                label = LABELS.get(leaf2) or LABELS.get(leaf) or rel
                matrices.append(Matrix(f"layers.{i}.{label}", i, label, tensor, transposed))
    if not matrices:
        raise ValueError(f"{model_dir}: no linear map in its decoder layers ({stack_path})")
    where = {m: p for p, m in model.named_modules()}
    embed = _file_name(where[model.get_input_embeddings()] + ".weight", names, model_dir)
    matrices.append(Matrix("embed", None, "embed", embed))
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:  # tied: the embedding again
        matrices.append(Matrix("lm_head", None, "lm_head", _file_name(where[head] + ".weight", names, model_dir)))
    keys = [m.key for m in matrices]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{model_dir}: two matrices share a label: {sorted(k for k in keys if keys.count(k) > 1)}")
    return Layout(tuple(matrices), layer_prefix, count, embed)


def decoder_layers(model, count: int, what: str = "the model"):
    """(path, ModuleList) of the model's decoder layers: the one ModuleList of `count` modules."""
    import torch

    stacks = [(path, m) for path, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if len(stacks) != 1:
        raise ValueError(f"{what}: expected one list of {count} decoder layers (num_hidden_layers) in "
                         f"{type(model).__name__}, found {[p for p, _ in stacks] or 'none'}")
    return stacks[0]


def load(model_dir: str | Path) -> tuple[dict, Layout]:
    """A model directory's weights (as stored) and their layout."""
    from rlheals import models

    weights = models.load_weights(model_dir)
    return weights, layout(model_dir, weights)


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers.pytorch_utils, without importing it here


def _is_linear(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or _is_conv1d(module)


def _file_name(path: str, names: set[str], model_dir) -> str:
    """A module's parameter name in the weights file: itself, else the one name ending with it."""
    if path in names:
        return path
    found = [n for n in names if n.endswith("." + path)]
    if len(found) != 1:
        raise ValueError(f"{model_dir}: its module {path} has {'no tensor' if not found else 'several tensors'} "
                         f"in the weights file{': ' + ', '.join(sorted(found)) if found else ''}")
    return found[0]
