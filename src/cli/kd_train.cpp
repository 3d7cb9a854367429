// kd-train: the command-line front end of kdistill (kd_train_main.cpp; kd/app/kd_train.h).
#include "kd/app/kd_train.h"

int main(int argc, char** argv) { return kd::app::kd_train_main(argc, argv); }
