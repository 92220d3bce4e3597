"""The foundation every layer uses: errors, atomic files, console text, the options machinery, the Accelerate
runtime, the run folder and the predict loop. Imports nothing else of carotid."""
