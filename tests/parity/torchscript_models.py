"""Exports TorchScript models for the kd::ScriptModel / kd::Teacher tests.

All share one tiny net (fc1 6->5, tanh, fc2 5->4) and differ in what forward returns:
  dict_teacher.pt       Dict[str, Tensor]: logits, hidden_states.0, attentions.0, aux
  list_dict_teacher.pt  Dict[str, List[Tensor]]: logits [z], hidden_states [h], attentions [a]
  tuple_teacher.pt      (logits, [h], [a])
  plain_teacher.pt      logits
  no_logits.pt          {'scores': ...}  (lacks what kdistill needs)
  not_torchscript.pt    garbage bytes
  expected.json         the input and the outputs, computed here by PyTorch
"""
import os
from typing import Dict, List, Tuple

import torch
import kdref


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 5)
        self.fc2 = torch.nn.Linear(5, 4)

    def parts(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.fc1(x))
        a = torch.softmax(h.unsqueeze(1).unsqueeze(-1) * h.unsqueeze(1).unsqueeze(-2), dim=-1)
        return self.fc2(h), h, a


class DictTeacher(Net):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        z, h, a = self.parts(x)
        return {"logits": z, "hidden_states.0": h, "attentions.0": a, "aux": h.sum(-1)}


class ListDictTeacher(Net):
    def forward(self, x: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        z, h, a = self.parts(x)
        return {"logits": [z], "hidden_states": [h], "attentions": [a]}


class TupleTeacher(Net):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        z, h, a = self.parts(x)
        return z, [h], [a]


class PlainTeacher(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)[0]


class NoLogits(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"scores": x * 2}


def main():
    out = kdref.out_dir()
    torch.manual_seed(0)
    state = Net().state_dict()
    x = torch.randn(3, 6)
    for name, cls in [("dict_teacher", DictTeacher), ("list_dict_teacher", ListDictTeacher),
                      ("tuple_teacher", TupleTeacher), ("plain_teacher", PlainTeacher)]:
        m = cls()
        m.load_state_dict(state)
        torch.jit.save(torch.jit.script(m), os.path.join(out, name + ".pt"))
    torch.jit.save(torch.jit.script(NoLogits()), os.path.join(out, "no_logits.pt"))
    with open(os.path.join(out, "not_torchscript.pt"), "wb") as f:
        f.write(b"this is not a zip archive")

    ref = DictTeacher()
    ref.load_state_dict(state)
    with torch.no_grad():
        d = ref(x)
    kdref.save(os.path.join(out, "expected.json"), x=x, logits=d["logits"],
               hidden0=d["hidden_states.0"], attention0=d["attentions.0"], aux=d["aux"])


if __name__ == "__main__":
    main()
