"""The MIMIC-III benchmark's 17 clinical variables (Harutyunyan et al. 2019, ``mimic3-benchmarks``).

Names are spelled exactly as the benchmark's per-stay CSV headers spell them (including the benchmark's
"Glascow" typo). The categorical values and normal values are those of the benchmark's
``mimic3models/resources/discretizer_config.json``. One discretized time step has 76 features laid out like the
benchmark's discretizer: for each variable in :data:`VARIABLES` order, either the one-hot block of its
categorical values or one continuous value (59 columns: 47 one-hot + 12 continuous), followed by 17 observation
masks (one per variable, same order).

Other modules (the synthetic generator, the EHR loader) import these names; keep them stable.
"""
from __future__ import annotations

#: Time column of a per-stay CSV (hours since ICU admission).
TIME_COLUMN = "Hours"

#: The 17 variables in benchmark order (the per-stay CSV columns after ``Hours``).
VARIABLES: list[str] = [
    "Capillary refill rate",
    "Diastolic blood pressure",
    "Fraction inspired oxygen",
    "Glascow coma scale eye opening",
    "Glascow coma scale motor response",
    "Glascow coma scale total",
    "Glascow coma scale verbal response",
    "Glucose",
    "Heart Rate",
    "Height",
    "Mean blood pressure",
    "Oxygen saturation",
    "Respiratory rate",
    "Systolic blood pressure",
    "Temperature",
    "Weight",
    "pH",
]

#: Full header of a benchmark per-stay CSV.
CSV_COLUMNS: list[str] = [TIME_COLUMN, *VARIABLES]

#: Categorical variables -> their possible string values, in the benchmark's one-hot order (2+8+12+13+12 = 47).
CATEGORICAL_VALUES: dict[str, list[str]] = {
    "Capillary refill rate": ["0.0", "1.0"],
    "Glascow coma scale eye opening": [
        "To Pain", "3 To speech", "1 No Response", "4 Spontaneously", "None", "To Speech", "Spontaneously",
        "2 To pain",
    ],
    "Glascow coma scale motor response": [
        "1 No Response", "3 Abnorm flexion", "Abnormal extension", "No response", "4 Flex-withdraws",
        "Localizes Pain", "Flex-withdraws", "Obeys Commands", "Abnormal Flexion", "6 Obeys Commands",
        "5 Localizes Pain", "2 Abnorm extensn",
    ],
    "Glascow coma scale total": ["11", "10", "13", "12", "15", "14", "3", "5", "4", "7", "6", "9", "8"],
    "Glascow coma scale verbal response": [
        "1 No Response", "No Response", "Confused", "Inappropriate Words", "Oriented", "No Response-ETT",
        "5 Oriented", "Incomprehensible sounds", "1.0 ET/Trach", "4 Confused", "2 Incomp sounds",
        "3 Inapprop words",
    ],
}

#: The 12 continuous variables, in benchmark order.
CONTINUOUS: list[str] = [v for v in VARIABLES if v not in CATEGORICAL_VALUES]

#: Values imputed before a variable's first observation (the benchmark's ``normal_values``). Categorical values
#: are strings from :data:`CATEGORICAL_VALUES`; continuous ones are floats.
NORMAL_VALUES: dict[str, str | float] = {
    "Capillary refill rate": "0.0",
    "Diastolic blood pressure": 59.0,
    "Fraction inspired oxygen": 0.21,
    "Glascow coma scale eye opening": "4 Spontaneously",
    "Glascow coma scale motor response": "6 Obeys Commands",
    "Glascow coma scale total": "15",
    "Glascow coma scale verbal response": "5 Oriented",
    "Glucose": 128.0,
    "Heart Rate": 86.0,
    "Height": 170.0,
    "Mean blood pressure": 77.0,
    "Oxygen saturation": 98.0,
    "Respiratory rate": 19.0,
    "Systolic blood pressure": 118.0,
    "Temperature": 36.6,
    "Weight": 81.0,
    "pH": 7.4,
}

NUM_ONE_HOT = sum(len(v) for v in CATEGORICAL_VALUES.values())  # 47
NUM_CONTINUOUS = len(CONTINUOUS)  # 12
NUM_VARIABLES = len(VARIABLES)  # 17
#: Features of one discretized time step: 47 one-hot + 12 continuous + 17 masks.
FEATURES_PER_STEP = NUM_ONE_HOT + NUM_CONTINUOUS + NUM_VARIABLES  # 76


def _layout() -> tuple[dict[str, int], list[int], list[str]]:
    """Start column of each variable's block, the continuous columns and a name for every one of the 76 columns."""
    start: dict[str, int] = {}
    names: list[str] = []
    for var in VARIABLES:
        start[var] = len(names)
        if var in CATEGORICAL_VALUES:
            names.extend(f"{var}->{value}" for value in CATEGORICAL_VALUES[var])
        else:
            names.append(var)
    continuous_cols = [start[v] for v in CONTINUOUS]
    names.extend(f"mask->{var}" for var in VARIABLES)
    return start, continuous_cols, names


#: Column where each variable's block starts in the 76-d step vector.
BLOCK_START, CONTINUOUS_COLUMNS, FEATURE_NAMES = _layout()
#: Column of the first observation mask (masks occupy ``MASK_START : MASK_START + 17``).
MASK_START = NUM_ONE_HOT + NUM_CONTINUOUS  # 59

assert NUM_ONE_HOT == 47 and NUM_CONTINUOUS == 12 and FEATURES_PER_STEP == 76 == len(FEATURE_NAMES)
