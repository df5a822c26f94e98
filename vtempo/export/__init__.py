"""Exported models: `export_model` writes a model as ONNX or TorchScript with its description
embedded; `load_exported` runs such a file (onnxruntime or torch) like the model it came from."""
from vtempo.export.exporting import FORMATS, ExportReport, export_model
from vtempo.export.loading import OnnxModel, load_exported

__all__ = ["FORMATS", "ExportReport", "OnnxModel", "export_model", "load_exported"]
