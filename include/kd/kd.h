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
#include "kd/losses/attention_mse.h"
#include "kd/losses/distill_batch.h"
#include "kd/losses/feature_l2.h"
#include "kd/losses/gradient_matching.h"
#include "kd/losses/hard_label_ce.h"
#include "kd/losses/layer_pair.h"
#include "kd/losses/loss_traits.h"
#include "kd/losses/schedule.h"
#include "kd/losses/temperature_kl.h"
