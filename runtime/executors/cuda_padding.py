"""A batch below a cuda package's least one, run padded up to it (``config["pad_batch"]``).

Torch's export can start a dynamic batch at 2 whatever was asked (its 0/1 specialisation:
the zoo Llama under torch 2.11 on the H200; Silero VAD's streaming model under torch 2.13),
and AOTInductor's kernels are undefined outside their range. Where the build checked that rows
do not mix (``targets/cuda_checks.batch_padding``), the executor repeats the last row of each
padded input along that input's batch axis up to the package's least batch, and cuts each
output back along its own batch axis. The batch may be any axis (Silero's state has it on
axis 1); payloads written before the axes were recorded pad axis 0 of everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Padding:
    """Batches ``small``..``least - 1`` run padded up to ``least`` along each listed input's
    batch axis; the listed outputs are cut back along theirs."""

    small: int
    least: int
    inputs: dict[str, int]
    outputs: dict[str, int]

    @classmethod
    def of(cls, pad: dict[str, Any], inputs: list[str], outputs: list[str]) -> Padding:
        """From the payload's ``pad_batch`` (the executor's input and output names fill in the
        axes of a payload that predates them)."""
        ins = pad.get("inputs", dict.fromkeys(inputs, 0))
        outs = pad.get("outputs", dict.fromkeys(outputs, 0))
        return cls(
            int(pad["from"]),
            int(pad["to"]),
            {str(k): int(v) for k, v in ins.items()},
            {str(k): int(v) for k, v in outs.items()},
        )

    def pad(self, inputs: dict[str, Any], torch: Any) -> tuple[dict[str, Any], int | None]:
        """``inputs`` padded up to ``least`` rows where their batch is below it, and the real
        row count; as they came, and ``None``, otherwise (the shape checks then speak)."""
        sizes = {
            int(inputs[name].shape[axis])
            for name, axis in self.inputs.items()
            if len(getattr(inputs.get(name), "shape", ())) > axis
        }
        if len(sizes) != 1:
            return inputs, None
        rows = sizes.pop()
        if not self.small <= rows < self.least:
            return inputs, None
        extra = self.least - rows
        padded = dict(inputs)
        for name, axis in self.inputs.items():
            value = inputs.get(name)
            if len(getattr(value, "shape", ())) <= axis:
                continue  # missing (the input check says so) or without that axis: as it came
            if isinstance(value, torch.Tensor):
                tail = value.narrow(axis, rows - 1, 1)
                padded[name] = torch.cat([value, tail.repeat_interleave(extra, axis)], axis)
            else:
                array = np.asarray(value)
                row = np.take(array, [rows - 1], axis=axis)
                padded[name] = np.concatenate([array, np.repeat(row, extra, axis=axis)], axis)
        return padded, rows

    def cut(self, out: dict[str, Any], rows: int, torch: Any) -> dict[str, Any]:
        """Outputs of a padded call cut back to the caller's ``rows``."""
        cut = dict(out)
        for name, axis in self.outputs.items():
            if name in cut:
                value = cut[name]
                if isinstance(value, torch.Tensor):
                    cut[name] = value.narrow(axis, 0, rows)
                else:
                    cut[name] = np.take(value, np.arange(rows), axis=axis)
        return cut
