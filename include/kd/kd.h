#pragma once
/// \file
/// Umbrella header: everything a distillation program needs.

#include "kd/core/atomic_file.h"
#include "kd/core/device.h"
#include "kd/core/error.h"
#include "kd/core/model.h"
#include "kd/core/model_output.h"
#include "kd/core/multi_teacher.h"
#include "kd/core/script_model.h"
#include "kd/core/student.h"
#include "kd/core/teacher.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/hard_label_ce.h"
#include "kd/losses/schedule.h"
#include "kd/losses/temperature_kl.h"
