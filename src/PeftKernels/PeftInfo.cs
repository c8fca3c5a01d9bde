namespace PeftKernels;
