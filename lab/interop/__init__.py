"""Weights from and to other libraries' layouts (timm: `lab.interop.timm`)."""
