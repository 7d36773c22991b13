"A shared test stand-in for device checks without a GPU: a model whose one parameter lives on the 'meta' device."
import torch


class MetaDeviceModel(torch.nn.Module):
    "Parameters on the meta device; subclasses' `forward` appends where their inputs arrive to `self.seen`."
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
        self.seen = []
