"""The label sheet: reading the workbook (`workbook`, `raw_xml`), finding its table (`columns`), the checks
that name a sheet's mistakes (`checks`), and the `LabelTable` the run uses (`labels`)."""
