"""The person folders: finding each person's frame files (`discovery`), matching them with the sheet's IDs
(`matching`), the layouts of an unlabelled --input (`layout`), and the checks and warnings on the folders and
their files (`checks`, `audit`, `twins`, `boilerplate`, `readable`)."""
