"""From the label sheet and the person folders to batches of frames.

`labels` reads the sheet, `discovery` finds each person's frames, `manifest` matches both and keeps
the run's view of its data, `split` assigns persons to splits, `decode` turns a file into pixels,
`cache` keeps decoded frames, `loaders` builds datasets and loaders, `transforms` normalises and augments.
"""
