"""Compare two runs and judge the change.

diff         what changed between a baseline run and a candidate run
unit_match   linear CKA and Hungarian unit matching: comparing layers without aligned units
thresholds   the limits `check` judges a diff by, and their parsing
"""
