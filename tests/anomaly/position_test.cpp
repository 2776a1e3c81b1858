#include <gtest/gtest.h>
#include <torch/torch.h>

#include "anomaly/position.h"

using namespace iadgpt;

TEST(Position, SingleRegionInEachOfTheNineCells) {
  const auto& names = anomaly::cell_names();
  for (int row = 0; row < 3; ++row) {
    for (int col = 0; col < 3; ++col) {
      auto map = torch::zeros({90, 90});
      map.slice(0, row * 30 + 10, row * 30 + 20).slice(1, col * 30 + 10, col * 30 + 20).fill_(1.0);
      auto regions = anomaly::find_regions(map, 0.5);
      ASSERT_EQ(regions.size(), 1u);
      EXPECT_EQ(regions[0].position, names[row * 3 + col]);
      EXPECT_EQ(regions[0].area, 100);
      EXPECT_EQ(anomaly::describe(regions),
                "Yes, there is an anomaly in the image, at the " + names[row * 3 + col] + " of the image.");
    }
  }
}

TEST(Position, TwoRegionsArePlural) {
  auto map = torch::zeros({90, 90});
  map.slice(0, 5, 25).slice(1, 5, 25).fill_(0.9);    // top left, 400 px
  map.slice(0, 70, 80).slice(1, 70, 80).fill_(0.8);  // bottom right, 100 px
  auto regions = anomaly::find_regions(map, 0.5);
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(anomaly::describe(regions),
            "Yes, there are 2 anomalies in the image, they are at the top left and bottom right of the image.");
}

TEST(Position, DiagonalNeighboursAreOneRegion) {
  auto map = torch::zeros({9, 9});
  map[3][3] = 1;
  map[4][4] = 1;  // touches only by a corner: one region under 8-connectivity
  EXPECT_EQ(anomaly::find_regions(map, 0.5).size(), 1u);
}

TEST(Position, NothingAboveThresholdIsNo) {
  auto map = torch::full({10, 10}, 0.2);
  auto regions = anomaly::find_regions(map, 0.5);
  EXPECT_TRUE(regions.empty());
  EXPECT_EQ(anomaly::describe(regions), "No, there is no anomaly in the image.");
}

TEST(Position, SmallRegionsCanBeDropped) {
  auto map = torch::zeros({30, 30});
  map[1][1] = 1;
  map.slice(0, 10, 20).slice(1, 10, 20).fill_(1);
  EXPECT_EQ(anomaly::find_regions(map, 0.5, 5).size(), 1u);
  EXPECT_EQ(anomaly::find_regions(map, 0.5).size(), 2u);
}

TEST(PositionWords, CellsNamedInASentenceCountALongerNameOnce) {
  using anomaly::cells_named;
  EXPECT_EQ(cells_named("Yes, there is an anomaly in the image, at the top left and center of the image."),
            (std::vector<std::string>{"top left", "center"}));
  EXPECT_EQ(cells_named("at the top, left and bottom right of the image"),
            (std::vector<std::string>{"top", "left", "bottom right"}));
  EXPECT_EQ(cells_named("No, there is no anomaly in the image."), std::vector<std::string>{});
  EXPECT_EQ(cells_named("Bottom"), std::vector<std::string>{"bottom"});
  EXPECT_EQ(cells_named("the topmost leftover"), std::vector<std::string>{});  // whole words only
}

TEST(PositionWords, CellsOfAMaskFollowTheGridOfCellName) {
  // 9 × 6 mask (H × W): cells are 3 rows × 2 columns of pixels each.
  auto mask = torch::zeros({9, 6}, torch::kUInt8);
  mask[0][0] = 1;  // top left
  mask[4][5] = 1;  // row 4 → middle, column 5 → right
  mask[8][2] = 1;  // row 8 → bottom, column 2 → center (columns 2-3)
  EXPECT_EQ(anomaly::cells_of_mask(mask), (std::vector<std::string>{"top left", "right", "bottom"}));
  // The same cells as cell_name gives the pixels' centres.
  EXPECT_EQ(anomaly::cell_name(0.5, 0.5, 6, 9), "top left");
  EXPECT_EQ(anomaly::cell_name(5.5, 4.5, 6, 9), "right");
  EXPECT_EQ(anomaly::cell_name(2.5, 8.5, 6, 9), "bottom");
  EXPECT_TRUE(anomaly::cells_of_mask(torch::zeros({9, 6})).empty());
}
