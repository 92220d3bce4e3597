"""From the label sheet and the person folders to batches of frames.

`labels` reads the sheet, `discovery` finds each person's frame files and their frame counts, `manifest`
matches both and keeps the run's view of its data, `check` proves frames readable (a bounded sample at
start-up, every other frame when first decoded) and reports it, `split` assigns persons to splits,
`decode` turns a file into frames (`dicom` for DICOM) with the `preprocessing` (crop, resize, channels),
`cache` keeps decoded frames, `loaders` builds datasets and loaders, `transforms` normalises and augments.
"""
